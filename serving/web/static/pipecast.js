// pipecast pages: the little that needs a script (background jobs with progress). No library.
"use strict";

async function postJson(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Requested-With": "pipecast" },
    body: JSON.stringify(body || {}),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

async function followJob(id, bar, status) {
  for (;;) {
    const response = await fetch(`/v1/jobs/${id}`, { credentials: "same-origin" });
    const job = await response.json();
    if (typeof job.progress === "number") bar.value = Math.round(job.progress * 100);
    status.textContent = job.message || job.status;
    if (job.status === "succeeded" || job.status === "failed") return job;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-job]");
  if (!button) return;
  event.preventDefault();
  const box = document.getElementById(button.dataset.progress);
  const bar = box.querySelector("progress");
  const status = box.querySelector("[role=status]");
  box.hidden = false;
  button.disabled = true;
  try {
    const job = await postJson(button.dataset.job, JSON.parse(button.dataset.body || "{}"));
    const done = await followJob(job.id, bar, status);
    status.textContent = done.status === "succeeded" ? `Done: ${done.message}` : `Failed: ${done.message}`;
    if (done.status === "succeeded") setTimeout(() => window.location.reload(), 1500);
  } catch (err) {
    status.textContent = `Failed: ${err.message}`;
  } finally {
    button.disabled = false;
  }
});

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-post-json]");
  if (!form) return;
  event.preventDefault();
  const out = form.querySelector("[role=status]");
  const body = Object.fromEntries(new FormData(form).entries());
  try {
    const data = await postJson(form.dataset.postJson, body);
    out.textContent = data.message || "Done";
    setTimeout(() => window.location.reload(), 1200);
  } catch (err) {
    out.textContent = `Refused: ${err.message}`;
  }
});
