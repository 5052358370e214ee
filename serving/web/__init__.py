"""Web pages served by the API app: templates, vendored-free CSS and JS, server-drawn SVG charts."""
