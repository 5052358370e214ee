"""A synthetic manufacturing B2B CRM with a known truth, to develop and test models against."""
