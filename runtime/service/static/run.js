/* The run page's script: hover and click details on the timeline, and, for a live run, new
   bars and task rows as attempts finish (polling live.json once a second). No dependency, no
   external asset; text goes in with textContent only. */
(function () {
  "use strict";
  var svg = document.getElementById("timeline");
  if (!svg) { return; }
  var NS = "http://www.w3.org/2000/svg";
  var labelW = Number(svg.dataset.labelW), plotW = Number(svg.dataset.plotW);
  var laneH = Number(svg.dataset.laneH), laneGap = 4, axisH = 20;
  var origin = Number(svg.dataset.origin), extent = Number(svg.dataset.extent);
  var count = Number(svg.dataset.count);
  var run = svg.dataset.run, app = svg.dataset.app;
  var tip = document.getElementById("tip"), detail = document.getElementById("detail");
  var wrap = svg.parentNode;
  var lanes = {};
  var laneCount = 0;
  svg.querySelectorAll("g.lane").forEach(function (g) {
    lanes[g.dataset.lane] = Number(g.dataset.y);
    laneCount += 1;
  });

  function x(s) { return labelW + plotW * Math.min(1, Math.max(0, s / extent)); }

  function place(rect) {
    var b = Number(rect.dataset.b), e = Number(rect.dataset.e);
    rect.setAttribute("x", x(b).toFixed(2));
    rect.setAttribute("width", Math.max(1.5, x(e) - x(b)).toFixed(2));
  }

  function fmt(s) {
    if (s < 1) { return Math.round(s * 1000) + " ms"; }
    if (s < 120) { return s.toFixed(2) + " s"; }
    return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  }

  function height() { return axisH + Math.max(1, laneCount) * (laneH + laneGap) + 4; }

  function drawTicks() {
    var axis = svg.querySelector("g.axis");
    while (axis.firstChild) { axis.removeChild(axis.firstChild); }
    var raw = extent / 6, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; })
      .find(function (v) { return v >= raw; });
    for (var t = 0; t <= extent + 1e-9; t += step) {
      var line = document.createElementNS(NS, "line");
      line.setAttribute("x1", x(t)); line.setAttribute("x2", x(t));
      line.setAttribute("y1", 14); line.setAttribute("y2", height());
      var text = document.createElementNS(NS, "text");
      text.setAttribute("x", x(t)); text.setAttribute("y", 11);
      text.textContent = t ? fmt(t) : "0";
      axis.appendChild(line); axis.appendChild(text);
    }
  }

  function lane(id, label, kind) {
    if (id in lanes) { return lanes[id]; }
    var y = axisH + laneCount * (laneH + laneGap);
    laneCount += 1;
    lanes[id] = y;
    var g = document.createElementNS(NS, "g");
    g.setAttribute("class", "lane lane-" + kind);
    g.dataset.lane = id; g.dataset.y = y;
    var bg = document.createElementNS(NS, "rect");
    bg.setAttribute("class", "lane-bg"); bg.setAttribute("x", 0); bg.setAttribute("y", y);
    bg.setAttribute("width", labelW + plotW + 10); bg.setAttribute("height", laneH);
    var text = document.createElementNS(NS, "text");
    text.setAttribute("x", 4); text.setAttribute("y", y + 12); text.textContent = label;
    g.appendChild(bg); g.appendChild(text);
    svg.querySelector("g.lanes").appendChild(g);
    svg.setAttribute("viewBox", "0 0 " + (labelW + plotW + 10) + " " + height());
    return y;
  }

  function addBar(b) {
    var y = lane(b.lane, b.lane_label, "worker");
    var r = document.createElementNS(NS, "rect");
    r.setAttribute("class", "bar" + (b.failed ? " failed" : ""));
    r.setAttribute("y", y);
    var data = {b: b.b, e: b.e, t: b.task, k: b.key, a: b.attempt, o: b.outcome};
    if (b.queued !== null) { data.q = b.queued; }
    if (b.error) { data.err = b.error; }
    Object.keys(data).forEach(function (k) { r.dataset[k] = data[k]; });
    place(r);
    svg.querySelector("g.bars").appendChild(r);
  }

  function drawPhases(phases) {
    var g = svg.querySelector("g.phases");
    while (g.firstChild) { g.removeChild(g.firstChild); }
    phases.forEach(function (p) {
      var y = lane(p.lane, p.lane, "driver");
      var r = document.createElementNS(NS, "rect");
      r.setAttribute("class", "phase p-" + p.name + (p.open ? " open" : ""));
      r.setAttribute("y", y + 2); r.setAttribute("height", laneH - 4);
      r.dataset.b = p.b; r.dataset.e = p.e; r.dataset.t = "driver: " + p.name;
      if (p.open) { r.dataset.open = "1"; }
      place(r);
      g.appendChild(r);
    });
  }

  function lines(rect) {
    var d = rect.dataset, out = [d.t];
    if (d.k) { out.push("call key " + d.k); }
    if (d.a) { out.push("attempt " + d.a + ": " + d.o); }
    out.push(d.open ? "never ended (the driver stopped during it)" : "duration " +
      fmt(Number(d.e) - Number(d.b)) + (d.q ? " (queued " + fmt(Number(d.q) / 1000) + ")" : ""));
    if (d.err) { out.push(d.err); }
    return out;
  }

  function fill(el, rect) {
    while (el.firstChild) { el.removeChild(el.firstChild); }
    lines(rect).forEach(function (line, i) {
      var div = document.createElement("div");
      if (i === 0) { div.className = "tip-title"; }
      div.textContent = line;
      el.appendChild(div);
    });
  }

  function target(event) {
    var t = event.target;
    return t && t.classList && (t.classList.contains("bar") || t.classList.contains("phase"))
      ? t : null;
  }

  svg.addEventListener("mousemove", function (event) {
    var rect = target(event);
    if (!rect) { tip.hidden = true; return; }
    fill(tip, rect);
    var box = wrap.getBoundingClientRect();
    tip.style.left = Math.min(event.clientX - box.left + 12, box.width - 320) + "px";
    tip.style.top = (event.clientY - box.top + 14) + "px";
    tip.hidden = false;
  });
  svg.addEventListener("mouseleave", function () { tip.hidden = true; });
  svg.addEventListener("click", function (event) {
    var rect = target(event);
    svg.querySelectorAll(".selected").forEach(function (r) { r.classList.remove("selected"); });
    if (!rect) { detail.hidden = true; return; }
    rect.classList.add("selected");
    fill(detail, rect);
    detail.hidden = false;
  });

  function cell(tr, text) {
    var td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  var rowsByKey = null;  // call key -> row, built at the first update

  function upsertRow(row) {
    var bodies = document.querySelectorAll("#tasks tbody");
    var body = bodies[bodies.length - 1];  // new calls go to the last chunk
    if (rowsByKey === null) {
      rowsByKey = new Map();
      document.querySelectorAll("#tasks tbody tr").forEach(function (r) {
        if (r.cells.length > 4) { rowsByKey.set(r.cells[4].textContent, r); }
      });
    }
    var tr = document.createElement("tr");
    cell(tr, row.task);
    var state = document.createElement("span");
    state.className = "state t-" + row.state; state.textContent = row.state;
    cell(tr, "").appendChild(state);
    cell(tr, String(row.attempts)); cell(tr, row.time);
    cell(tr, row.key); cell(tr, row.files); cell(tr, row.error);
    var old = rowsByKey.get(row.key);
    if (old) { old.parentNode.replaceChild(tr, old); } else { body.appendChild(tr); }
    rowsByKey.set(row.key, tr);
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }

  function apply(update) {
    if (update.since === 0 && count > 0) {  // the journal was rewritten: redraw everything
      var bars = svg.querySelector("g.bars");
      while (bars.firstChild) { bars.removeChild(bars.firstChild); }
    }
    var rescale = update.extent > extent;
    if (rescale) { extent = update.extent; }
    update.bars.forEach(addBar);
    drawPhases(update.phases);
    if (rescale) {
      svg.querySelectorAll("rect.bar").forEach(place);
    }
    drawTicks();
    update.rows.forEach(upsertRow);
    count = update.count;
    svg.dataset.count = count;
    var state = document.getElementById("state");
    state.textContent = update.state;
    state.className = "state s-" + update.state.toLowerCase();
    setText("c-done", update.counters.tasks_done);
    setText("c-calls", update.calls);
    setText("driver", update.driver);
    setText("c-attempts", update.counters.attempts);
    setText("c-tasks-failed", update.counters.tasks_failed);
    setText("c-failed", update.counters.failed_attempts);
  }

  function poll() {
    var url = "/runs/" + encodeURIComponent(run) + "/live.json?app=" + encodeURIComponent(app) +
      "&since=" + count + "&origin=" + origin;
    fetch(url, {credentials: "same-origin", cache: "no-store"}).then(function (answer) {
      if (!answer.ok) { throw new Error("HTTP " + answer.status); }
      return answer.json();
    }).then(function (update) {
      apply(update);
      if (update.finished) {
        setText("live-note", "finished: reload the page for its output");
        svg.dataset.live = "false";
      } else {
        window.setTimeout(poll, 1000);
      }
    }).catch(function (error) {
      setText("live-note", "live updates stopped (" + error.message + "): reload the page");
    });
  }

  if (svg.dataset.live === "true") { window.setTimeout(poll, 1000); }
}());
