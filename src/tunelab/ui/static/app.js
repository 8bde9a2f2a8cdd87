// tunelab ui: sortable tables, a run's live curves, and the playground's side-by-side streams. No libraries.
"use strict";

function el(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// --- sortable tables: click a header to sort by it, again to reverse ------------------------------------------
function sortKey(cell, numeric) {
  const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  if (!numeric) return raw.toLowerCase();
  const number = parseFloat(raw);
  return Number.isNaN(number) ? -Infinity : number;
}

function makeSortable(table) {
  table.querySelectorAll("thead th").forEach((header, column) => {
    if (header.dataset.type === "none") return;
    header.classList.add("sort");
    header.addEventListener("click", () => {
      const numeric = header.dataset.type === "number";
      const ascending = header.dataset.order !== "asc";
      table.querySelectorAll("thead th").forEach((h) => delete h.dataset.order);
      header.dataset.order = ascending ? "asc" : "desc";
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = sortKey(a.cells[column], numeric), y = sortKey(b.cells[column], numeric);
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      rows.forEach((row) => body.appendChild(row));
    });
  });
}
document.querySelectorAll("table.sortable").forEach(makeSortable);

// --- live curves -----------------------------------------------------------------------------------------------
function tickFormat(low, high) {
  // Enough decimals to tell the axis ends apart: a loss between 0.6931 and 0.6934 needs four.
  const span = Math.abs(high - low) || Math.abs(high) || 1;
  const decimals = Math.max(0, Math.min(6, 2 - Math.floor(Math.log10(span))));
  return (value) => value.toFixed(decimals);
}

function drawCurve(name, points) {
  const width = 460, height = 220, left = 58, right = 12, top = 26, bottom = 34;
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "curve");
  svg.setAttribute("id", `curve-${name}`);
  svg.dataset.points = String(points.length);
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(svgNS, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  };
  const title = name === "loss" ? "training loss" : name.replace(/^eval_/, "validation ");
  add("text", { x: left, y: 16, class: "curve-title" }, `${title} (${points.length} point${points.length === 1 ? "" : "s"})`);
  const steps = points.map((p) => p[0]), values = points.map((p) => p[1]);
  const x0 = Math.min(...steps), x1 = Math.max(...steps), y0 = Math.min(...values), y1 = Math.max(...values);
  const sx = (x) => left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - left - right);
  const sy = (y) => top + (y1 === y0 ? 0.5 : 1 - (y - y0) / (y1 - y0)) * (height - top - bottom);
  add("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" });
  add("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" });
  const tick = tickFormat(y0, y1);
  add("text", { x: left - 4, y: top + 4, class: "tick", "text-anchor": "end" }, tick(y1));
  add("text", { x: left - 4, y: height - bottom, class: "tick", "text-anchor": "end" }, tick(y0));
  add("text", { x: left, y: height - bottom + 14, class: "tick" }, `step ${x0}`);
  add("text", { x: width - right, y: height - bottom + 14, class: "tick", "text-anchor": "end" }, `step ${x1}`);
  add("polyline", { points: points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "), class: "line" });
  for (const [x, y] of points.length <= 60 ? points : []) add("circle", { cx: sx(x), cy: sy(y), r: 2.5, class: "dot" });
  return svg;
}

function startCurves(container) {
  if (!container) return;
  const status = document.getElementById("curve-status");
  const wasFinished = container.dataset.finished === "yes";
  async function refresh() {
    let data;
    try {
      const response = await fetch(`/api/run/${encodeURI(container.dataset.run)}`);
      data = await response.json();
    } catch (error) {
      status.textContent = `could not read the run's metrics (${error}); retrying`;
      setTimeout(refresh, 5000);
      return;
    }
    const series = new Map(Object.entries(data.curves)); // chosen by the app (ui/index.py: curves)
    container.replaceChildren(...Array.from(series, ([name, points]) => drawCurve(name, points)));
    const state = document.getElementById("run-state");
    state.textContent = data.status;
    state.className = `state state-${data.state_class}`;
    status.textContent = series.size
      ? `${data.metrics.length} log entries; ${data.finished ? "final" : "updating every 2 s while the run trains"}`
      : "no training log yet";
    if (!data.finished) setTimeout(refresh, 2000);
    else if (!wasFinished) location.reload(); // it just finished: show its results
  }
  refresh();
}

// --- playground ------------------------------------------------------------------------------------------------
async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const payload = event.slice(6);
      if (payload === "[DONE]") return;
      yield JSON.parse(payload);
    }
  }
}

function errorText(body) {
  return body && body.error ? body.error.message || JSON.stringify(body.error) : JSON.stringify(body);
}

async function askGenerator(model, ask, output, meta) {
  const body = { model: model.id, stream: true, max_tokens: ask.maxTokens, temperature: 0 };
  if (ask.record) Object.assign(body, { record: ask.record, messages: [] });
  else body.messages = [{ role: "user", content: ask.prompt }];
  const started = performance.now();
  const response = await fetch("/serve/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(errorText(await response.json()));
  let pieces = 0, finish = null;
  for await (const chunk of serverSentEvents(response)) {
    if (chunk.error) throw new Error(errorText(chunk));
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) continue;
    if (choice.delta && choice.delta.content) {
      output.textContent += choice.delta.content;
      pieces += 1;
      output.dataset.pieces = String(pieces);
    }
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  meta.textContent = `${pieces} streamed piece(s) in ${((performance.now() - started) / 1000).toFixed(1)} s; finish: ${finish}`;
}

async function askClassifier(model, ask, output, meta) {
  const input = ask.record || ask.prompt;
  const response = await fetch("/serve/v1/classify", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model: model.id, input }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(errorText(body));
  const answer = body.data[0];
  output.textContent = answer.label;
  meta.textContent = Object.entries(answer.scores).map(([label, p]) => `${label} ${(100 * p).toFixed(1)}%`).join(" · ");
}

function startPlayground() {
  const pick = document.getElementById("playground-pick"), ask = document.getElementById("playground-ask");
  const status = document.getElementById("load-status"), answers = document.getElementById("answers");
  const fieldsBox = document.getElementById("record-fields"), prompt = document.getElementById("prompt");
  let models = [];

  function recordFields() {
    const tuned = models.filter((m) => m.label.startsWith("tuned"));
    const first = tuned.length ? tuned[0].fields.join("\u0000") : "";
    return first && tuned.every((m) => m.fields.join("\u0000") === first) ? tuned[0].fields : [];
  }

  function showForm() {
    fieldsBox.replaceChildren();
    const fields = recordFields();
    if (fields.length) {
      fieldsBox.appendChild(el("p", { class: "muted small" }, "These runs fill a prompt template from a record: give its fields, and every model gets the prompt the run was trained on. Leave them empty to send the free prompt below instead."));
      for (const name of fields) {
        fieldsBox.appendChild(el("label", { for: `field-${name}` }, name));
        fieldsBox.appendChild(el("textarea", { id: `field-${name}`, "data-field": name, rows: 2 }));
      }
    }
    answers.replaceChildren(...models.map((model) => {
      const column = el("div", { class: "column answer", "data-model": model.id });
      column.appendChild(el("h3", {}, model.label));
      column.appendChild(el("pre", { class: "output" }));
      column.appendChild(el("p", { class: "muted small meta" }));
      return column;
    }));
    ask.hidden = false;
  }

  pick.addEventListener("submit", async (event) => {
    event.preventDefault();
    const runs = Array.from(document.getElementById("run-select").selectedOptions, (o) => o.value);
    status.textContent = "loading the models (seconds per model on a CPU) …";
    const response = await fetch("/api/playground/load", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ runs }),
    });
    const body = await response.json();
    if (!response.ok) { status.textContent = body.error; return; }
    models = body.models;
    status.textContent = `loaded: ${models.map((m) => m.id).join(", ")}`;
    showForm();
  });

  ask.addEventListener("submit", async (event) => {
    event.preventDefault();
    const record = {};
    fieldsBox.querySelectorAll("[data-field]").forEach((box) => { if (box.value.trim()) record[box.dataset.field] = box.value; });
    const useRecord = Object.keys(record).length > 0;
    const request = { prompt: prompt.value, record: useRecord ? record : null, maxTokens: Number(document.getElementById("max-tokens").value) || 64 };
    if (!useRecord && !request.prompt.trim()) { status.textContent = "write a prompt, or fill the record's fields"; return; }
    await Promise.all(models.map(async (model) => {
      const column = answers.querySelector(`[data-model="${CSS.escape(model.id)}"]`);
      const output = column.querySelector(".output"), meta = column.querySelector(".meta");
      output.textContent = ""; output.classList.remove("error"); delete output.dataset.pieces;
      meta.textContent = "…";
      column.dataset.done = "no";
      try {
        await (model.kind === "classify" ? askClassifier : askGenerator)(model, request, output, meta);
      } catch (error) {
        output.classList.add("error");
        output.textContent = String(error.message || error);
        meta.textContent = "failed";
      }
      column.dataset.done = "yes";
    }));
  });

  if (document.getElementById("run-select").selectedOptions.length) pick.requestSubmit();
}
