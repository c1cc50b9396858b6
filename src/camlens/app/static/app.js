// camlens app: the page. Plain JavaScript, no library, no external URL: everything comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { photo: null, job: null, config: null, timer: null, runSoon: null };

function setState(value) { document.body.dataset.state = value; }

function message(text) { $("message").textContent = text || ""; }

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let doc = null;
  try { doc = await response.json(); } catch (err) { doc = { error: `HTTP ${response.status}` }; }
  if (!response.ok) { throw new Error(doc && doc.error ? doc.error : `HTTP ${response.status}`); }
  return doc;
}

function option(select, value, text, selected) {
  const o = document.createElement("option");
  o.value = value; o.textContent = text; o.selected = !!selected;
  select.appendChild(o);
}

async function init() {
  try {
    const config = await api("/api/config");
    state.config = config;
    for (const name of config.models) option($("model"), name, name);
    for (const name of config.demos) option($("demo"), name, name);
    for (const m of config.methods) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox"; box.name = "method"; box.value = m.name; box.checked = m.name === "gradcam";
      box.addEventListener("change", schedule);
      label.title = m.about;
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + m.name));
      $("methods").appendChild(label);
    }
    await loadModel();
    setState("ready");
  } catch (err) { message(err.message); setState("error"); }
}

async function loadModel() {
  const info = await api(`/api/models/${encodeURIComponent($("model").value)}`);
  const layer = $("layer");
  layer.textContent = "";
  for (const row of info.layers) {
    const mark = row.default ? "  (default)" : "";
    const kind = row.kind === "grid" ? "" : ` ${row.kind}`;
    option(layer, row.default ? "" : row.name, `${row.name}  ${row.grid.join("x")}${kind}${mark}`, row.default);
  }
  state.classNames = info.classes || [];
  completeClasses();
}

// The class box takes several names separated by ";": the suggestions complete the last one, each offered
// with the names already typed in front of it (a datalist matches the whole field).
function completeClasses() {
  const field = $("classes").value;
  const cut = field.lastIndexOf(";");
  const head = cut < 0 ? "" : field.slice(0, cut + 1) + " ";
  const part = field.slice(cut + 1).trim().toLowerCase();
  const names = $("class-names");
  names.textContent = "";
  let shown = 0;
  for (const name of state.classNames || []) {
    if (part && !name.toLowerCase().includes(part)) continue;
    option(names, head + name, name);
    if (++shown >= 200) break;
  }
}

function photoShown(doc) {
  state.photo = doc.id;
  $("photo").src = `/api/photos/${encodeURIComponent(doc.id)}`;
  $("photo").hidden = false;
  $("photo-name").textContent = `${doc.name} (${doc.size[0]} x ${doc.size[1]})`;
}

async function upload(file) {
  message("");
  const limit = state.config ? state.config.limits.max_upload_bytes : Infinity;
  if (file.size > limit) { message(`${file.name}: ${file.size.toLocaleString()} bytes; the limit is ${limit.toLocaleString()}`); return; }
  try {
    const doc = await api("/api/photos", {
      method: "POST", body: file,
      headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
    });
    photoShown(doc);
    run();
  } catch (err) { message(err.message); setState("error"); }
}

async function pickDemo(stem) {
  if (!stem) return;
  message("");
  try {
    photoShown(await api(`/api/photos/demo/${encodeURIComponent(stem)}`, { method: "POST", body: "" }));
    run();
  } catch (err) { message(err.message); setState("error"); }
}

function request() {
  const methods = [...document.querySelectorAll("input[name=method]:checked")].map((b) => b.value);
  const classes = $("classes").value.split(";").map((c) => c.trim()).filter((c) => c);
  return {
    photo: state.photo, model: $("model").value, methods, layer: $("layer").value || null,
    classes, topk: parseInt($("topk").value, 10) || 1, threshold: parseFloat($("threshold").value),
    curves: $("curves").checked, steps: parseInt($("steps").value, 10) || 10,
  };
}

function schedule() {
  if (!state.photo) return;
  clearTimeout(state.runSoon);
  state.runSoon = setTimeout(run, 200);
}

async function cancel() {
  if (!state.job) return;
  const job = state.job;
  try { await api(`/api/jobs/${job}/cancel`, { method: "POST", body: "" }); } catch (err) { /* already gone */ }
}

async function run() {
  if (!state.photo) { message("upload a photo or pick a built-in one first"); return; }
  if (state.job) await cancel();
  message("");
  setState("running");
  $("results").classList.add("stale");
  $("status").textContent = "working...";
  $("cancel").disabled = false;
  try {
    const job = await api("/api/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request()),
    });
    state.job = job.id;
    poll(job.id);
  } catch (err) { finish(); message(err.message); setState("error"); }
}

function finish() {
  $("results").classList.remove("stale");
  $("cancel").disabled = true;
  $("progress").hidden = true;
  clearTimeout(state.timer);
}

async function poll(id) {
  let job;
  try { job = await api(`/api/jobs/${id}`); } catch (err) { finish(); message(err.message); setState("error"); return; }
  if (state.job !== id) return; // a newer request replaced this one
  const p = job.progress || {};
  if (p.total) {
    $("progress").hidden = false; $("progress").max = p.total; $("progress").value = p.done;
    $("status").textContent = `${p.desc}: ${p.done} / ${p.total}`;
  }
  if (job.state === "queued" || job.state === "running") { state.timer = setTimeout(() => poll(id), 200); return; }
  finish();
  state.job = null;
  if (job.state === "done") { render(job); $("status").textContent = `done in ${job.result.seconds.toFixed(2)} s`; setState("done"); }
  else if (job.state === "cancelled") { $("status").textContent = "cancelled"; setState("cancelled"); }
  else { $("status").textContent = ""; message(job.error); setState("error"); }
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function link(href, text) { const a = el("a", text); a.href = href; a.download = ""; return a; }

function picture(src, caption, cls) {
  const fig = el("figure");
  const img = el("img", null, cls);
  img.src = src; img.alt = caption;
  fig.appendChild(img); fig.appendChild(el("figcaption", caption));
  return fig;
}

function curves(data) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 220, H = 140, L = 28, B = 20;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("class", "curves");
  const top = Math.max(1e-9, ...data.deletion.scores, ...data.insertion.scores);
  const x = (f) => L + f * (W - L - 6), y = (s) => H - B - (s / top) * (H - B - 8);
  const axis = document.createElementNS(NS, "path");
  axis.setAttribute("d", `M${L},6 V${H - B} H${W - 6}`); axis.setAttribute("stroke", "#999"); axis.setAttribute("fill", "none");
  svg.appendChild(axis);
  for (const [name, colour] of [["deletion", "#dc2626"], ["insertion", "#2563eb"]]) {
    const c = data[name];
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", c.fractions.map((f, i) => `${x(f).toFixed(1)},${y(c.scores[i] || 0).toFixed(1)}`).join(" "));
    line.setAttribute("fill", "none"); line.setAttribute("stroke", colour); line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", L + 4); t.setAttribute("y", name === "deletion" ? 16 : 28); t.setAttribute("fill", colour);
    t.textContent = `${name} AUC ${c.auc === null ? "n/a" : c.auc.toFixed(3)}`;
    svg.appendChild(t);
  }
  for (const [tx, ty, text] of [[L, H - 4, "0  fraction of pixels  1"], [2, 14, top.toFixed(2)], [2, H - B, "0"]]) {
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", tx); label.setAttribute("y", ty); label.textContent = text;
    svg.appendChild(label);
  }
  const title = document.createElementNS(NS, "title");
  title.textContent = "probability of the class as the most salient pixels are deleted (red) or inserted (blue)";
  svg.appendChild(title);
  return svg;
}

function render(job) {
  const result = job.result, base = result.files_url;
  const preds = $("predictions");
  preds.textContent = "";
  preds.appendChild(el("strong", "Prediction: "));
  preds.appendChild(document.createTextNode(result.predictions.map((p) => `${p.label} ${p.probability === null ? "" : p.probability.toFixed(3)}`).join(" · ")));
  const downloads = $("downloads");
  downloads.textContent = "";
  downloads.appendChild(link(`${base}result.json`, "result (JSON)"));
  const out = $("results");
  out.textContent = "";
  for (const m of result.methods) {
    const box = el("div", null, "method-result");
    box.dataset.method = m.method;
    box.appendChild(el("h2", m.method));
    const where = m.layer ? `layer ${m.layer}, map ${m.raw_size.join("x")}` : `input pixels, ${m.raw_size.join("x")}`;
    box.appendChild(el("div", `${where}; ${m.cached ? "from cache" : `${m.seconds.toFixed(2)} s`}`, "meta"));
    for (const t of m.targets) {
      const div = el("div", null, "target");
      const p = t.probability === null ? `logit ${t.logit}` : `p ${t.probability.toFixed(3)}`;
      div.appendChild(el("div", `${t.label} (class ${t.class_id}), ${p}, box ${t.box ? `[${t.box.join(", ")})` : "none"}`));
      const pics = el("div", null, "pictures");
      const f = (name) => base + encodeURIComponent(name);
      pics.appendChild(picture(f(t.files.overlay), "overlay and box", "overlay"));
      pics.appendChild(picture(f(t.files.raw), `signed raw map (${t.raw_range.join(" .. ")})`, "raw"));
      if (t.files.pixels) pics.appendChild(picture(f(t.files.pixels), "pixel-space attribution", "pixels"));
      if (t.curves) pics.appendChild(curves(t.curves));
      div.appendChild(pics);
      const links = el("div", null, "links");
      links.appendChild(link(f(t.files.map), "map .npy"));
      links.appendChild(link(f(t.files.overlay), "overlay .png"));
      links.appendChild(link(f(t.files.raw), "raw map .png"));
      if (t.files.pixels) links.appendChild(link(f(t.files.pixels), "pixels .png"));
      div.appendChild(links);
      box.appendChild(div);
    }
    out.appendChild(box);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); });
  $("demo").addEventListener("change", (e) => pickDemo(e.target.value));
  $("model").addEventListener("change", async () => {
    try { await loadModel(); schedule(); } catch (err) { message(err.message); setState("error"); }
  });
  for (const id of ["layer", "topk", "classes", "curves", "steps"]) $(id).addEventListener("change", schedule);
  $("classes").addEventListener("input", completeClasses);
  $("threshold").addEventListener("input", () => { $("threshold-value").textContent = parseFloat($("threshold").value).toFixed(2); });
  $("threshold").addEventListener("change", schedule);
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  init();
});
