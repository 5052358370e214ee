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

function jobText(job) {
  if (job.state === "failed") return job.error || "failed";
  if (job.state === "succeeded" && job.result) {
    return Object.entries(job.result)
      .map(([name, r]) => `${name} v${r.version} (${r.alias})`)
      .join(", ");
  }
  const p = job.progress || {};
  return p.phase ? `${job.state}: ${p.phase} ${p.done}/${p.total}` : job.state;
}

async function followJob(id, bar, status) {
  for (;;) {
    const response = await fetch(`/v1/jobs/${id}`, { credentials: "same-origin" });
    const job = await response.json();
    if (!response.ok) throw new Error(job.detail || response.statusText);
    if (job.progress) bar.value = Math.round((job.progress.fraction || 0) * 100);
    status.textContent = jobText(job);
    if (job.state === "succeeded" || job.state === "failed") return job;
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
    const ok = done.state === "succeeded";
    status.textContent = ok ? `Done: ${jobText(done)}` : `Failed: ${jobText(done)}`;
    if (ok) setTimeout(() => window.location.reload(), 1500);
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
    out.textContent = data.reason || data.message || "Done";
    setTimeout(() => window.location.reload(), 1200);
  } catch (err) {
    out.textContent = `Refused: ${err.message}`;
  }
});
