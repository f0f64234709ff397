// The page of `nst-fast serve`: upload or pick two images, start a job, follow its progress stream
// (Server-Sent Events, read with fetch so that a bearer token can go with it), cancel, download.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { content: null, style: null, job: null, stream: null, resultUrl: null };

function token() { return sessionStorage.getItem("nst-fast-token") || ""; }

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", "Bearer " + token());
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs an access token: type it in the box and try again");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showImage(img, blob) {
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = URL.createObjectURL(blob);
  img.src = img.dataset.url;
  img.hidden = false;
}

function choose(kind, blob) {
  state[kind] = blob;
  showImage($(kind + "-preview"), blob);
  if (kind === "style") $("style-id").value = "";
}

async function useSample(kind) {
  try {
    choose(kind, await (await api("/v1/samples/" + kind)).blob());
  } catch (e) { say(e.message, true); }
}

async function loadStyles() {
  try {
    const { styles } = await (await api("/v1/styles")).json();
    for (const s of styles) {
      const option = document.createElement("option");
      option.value = s.id;
      option.textContent = `${s.id.slice(0, 8)} (${s.width}×${s.height})`;
      $("style-id").append(option);
    }
  } catch (e) { /* a token may be needed first; the list is optional */ }
}

function options() {
  const number = (id) => Number($(id).value);
  return {
    size: number("size"),
    style_weight: number("style-weight"),
    steps: number("steps"),
    preserve_colors: $("preserve-colors").checked,
  };
}

function figures(p) {
  const parts = [`step ${p.step} / ${p.total}`];
  if (p.loss !== null && p.loss !== undefined) parts.push(`loss ${Number(p.loss).toPrecision(4)}`);
  if (p.elapsed !== null && p.elapsed !== undefined) parts.push(`${Number(p.elapsed).toFixed(1)} s`);
  if (p.eta !== null && p.eta !== undefined) parts.push(`about ${Math.ceil(p.eta)} s left`);
  $("figures").textContent = parts.join(" · ");
  $("progress").max = Math.max(1, p.total);
  $("progress").value = p.step;
}

async function start() {
  const styleId = $("style-id").value;
  if (!state.content || (!state.style && !styleId)) {
    say("Choose a content image and a style (upload one or use a sample).", true);
    return;
  }
  const form = new FormData();
  form.append("content", state.content, "content");
  if (styleId) form.append("style_id", styleId); else form.append("style", state.style, "style");
  form.append("options", JSON.stringify(options()));
  $("start").disabled = true;
  $("result").hidden = true;
  $("download-box").hidden = true;
  try {
    const job = await (await api("/v1/jobs", { method: "POST", body: form })).json();
    state.job = job.id;
    $("cancel").disabled = false;
    say("Queued…");
    await follow(job.id, Math.max(1, Math.round(options().steps / 30)));
  } catch (e) {
    say(e.message, true);
  } finally {
    $("start").disabled = false;
    $("cancel").disabled = true;
  }
}

// Reads the job's event stream to its end: progress, previews, then the final status.
async function follow(id, every) {
  state.stream = new AbortController();
  const response = await api(`/v1/jobs/${id}/events?preview=${every}`, { signal: state.stream.signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) await handle(kind, JSON.parse(data));
    }
  }
}

async function handle(kind, data) {
  if (kind === "progress") {
    say("Running…");
    figures(data);
  } else if (kind === "preview") {
    $("result").src = "data:image/jpeg;base64," + data.jpeg;
    $("result").hidden = false;
  } else if (kind === "status") {
    figures(data);
    if (data.status === "queued") say("Queued…");
    else if (data.status === "running") say("Running…");
    else if (data.status === "done") await finished(data.id);
    else say(`Job ${data.status}${data.error ? ": " + data.error : ""}`, data.status === "failed");
  } else if (kind === "end") {
    say(data.error || "the server ended the stream", true);
  }
}

async function finished(id) {
  say("Done.");
  $("progress").value = $("progress").max;
  await download(id);
  $("download-box").hidden = false;
}

async function download(id) {
  const format = $("format").value;
  const blob = await (await api(`/v1/jobs/${id}/result?format=${format}`)).blob();
  if (format !== "tif") showImage($("result"), blob);  // browsers do not show TIFF
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  $("download").href = state.resultUrl;
  $("download").download = `stylized-${id.slice(0, 8)}.${format}`;
}

async function cancel() {
  if (!state.job) return;
  try {
    await api(`/v1/jobs/${state.job}`, { method: "DELETE" });
  } catch (e) { say(e.message, true); }
}

$("content-file").addEventListener("change", (e) => e.target.files[0] && choose("content", e.target.files[0]));
$("style-file").addEventListener("change", (e) => e.target.files[0] && choose("style", e.target.files[0]));
$("content-sample").addEventListener("click", () => useSample("content"));
$("style-sample").addEventListener("click", () => useSample("style"));
$("start").addEventListener("click", start);
$("cancel").addEventListener("click", cancel);
$("format").addEventListener("change", () => state.job && download(state.job).catch((e) => say(e.message, true)));
$("token").addEventListener("change", (e) => { sessionStorage.setItem("nst-fast-token", e.target.value); loadStyles(); });
loadStyles();
