/* slabkit's interactive flame graph: one front end for JupyterLab (the FlameGraph widget)
 * and for the HTML report. It needs plotly.js loaded first (window.Plotly).
 *
 *   slabkitFlame.render(el, spec, {onSearch}) -> {search(query), resetZoom(), destroy()}
 *
 * spec: {data: [icicle trace], layout} as slabkit.ui.flame.figure.figure_spec writes it.
 * Above the figure: a search box (case-insensitive part of a function or process name:
 * matching boxes turn magenta, the others grey, and the line beside it says how many boxes
 * match and what share of the whole they cover, nested matches counted once) and "Reset
 * zoom". Clicking a box zooms into it (plotly's icicle), the path bar zooms back out.
 * A static image already inside `el` (class slabkit-flame-static) is hidden once the figure
 * is drawn: where scripts cannot run, it stays.
 */
(function (global) {
  "use strict";
  var MATCH = "rgb(230,0,230)";
  var OTHER = "rgb(222,222,222)";

  function matchesOf(trace, query) {
    var q = String(query || "").trim().toLowerCase();
    var labels = trace.labels || [];
    if (!q) return null;
    return labels.map(function (l) { return String(l).toLowerCase().indexOf(q) >= 0; });
  }

  function coveredShare(trace, match) {
    // the share of the root covered by matching boxes, a box under a matching one not
    // counted again
    var ids = trace.ids, parents = trace.parents, values = trace.values;
    var index = {};
    ids.forEach(function (id, i) { index[id] = i; });
    var sum = 0, n = 0;
    for (var i = 0; i < ids.length; i++) {
      if (!match[i]) continue;
      n++;
      var p = index[parents[i]], covered = false;
      while (p !== undefined) {
        if (match[p]) { covered = true; break; }
        p = index[parents[p]];
      }
      if (!covered) sum += Number(values[i]) || 0;
    }
    var root = Number(values[0]) || 0;
    return {matches: n, share: root > 0 ? sum / root : 0};
  }

  function render(el, spec, options) {
    options = options || {};
    var Plotly = global.Plotly;
    if (!Plotly) {
      el.setAttribute("data-flame-state", "no-plotly");
      return null;
    }
    var fig = JSON.parse(JSON.stringify(spec));
    var trace = fig.data[0];
    var base = (trace.marker && trace.marker.colors || []).slice();
    var bar = document.createElement("div");
    bar.className = "slabkit-flame-bar";
    bar.style.cssText = "display:flex;gap:8px;align-items:center;margin:4px 0;font:13px sans-serif";
    var input = document.createElement("input");
    input.type = "search";
    input.className = "slabkit-flame-search";
    input.placeholder = "search a function or process, e.g. ext4 or openat";
    input.style.cssText = "width:22em;padding:2px 6px";
    var reset = document.createElement("button");
    reset.type = "button";
    reset.className = "slabkit-flame-reset";
    reset.textContent = "Reset zoom";
    var info = document.createElement("span");
    info.className = "slabkit-flame-matches";
    info.style.color = "#555";
    var hint = document.createElement("span");
    hint.style.color = "#777";
    hint.textContent = "click a box to zoom in, the path bar to zoom out";
    bar.appendChild(input);
    bar.appendChild(reset);
    bar.appendChild(info);
    bar.appendChild(hint);
    var plot = document.createElement("div");
    plot.className = "slabkit-flame-plot";
    el.appendChild(bar);
    el.appendChild(plot);

    var config = {responsive: true, displaylogo: false,
                  modeBarButtonsToRemove: ["sendDataToCloud", "lasso2d", "select2d"]};
    var drawn = Plotly.newPlot(plot, fig.data, fig.layout, config);

    function search(query) {
      var match = matchesOf(trace, query);
      var result = {matches: 0, share: 0};
      var colors = base;
      if (match) {
        result = coveredShare(trace, match);
        colors = base.map(function (c, i) { return match[i] ? MATCH : OTHER; });
        info.textContent = result.matches + (result.matches === 1 ? " box matches" :
          " boxes match") + ", " + (100 * result.share).toFixed(1) + "% of the whole";
      } else {
        info.textContent = "";
      }
      if (input.value !== (query || "")) input.value = query || "";
      el.setAttribute("data-matches", String(result.matches));
      return Promise.resolve(drawn).then(function () {
        return Plotly.restyle(plot, {"marker.colors": [colors]});
      }).then(function () { return result; });
    }

    function resetZoom() {
      return Plotly.restyle(plot, {level: [trace.ids[0]]});
    }

    input.addEventListener("input", function () {
      var q = input.value;
      search(q).then(function (result) {
        if (options.onSearch) options.onSearch(q, result);
      });
    });
    reset.addEventListener("click", function () { resetZoom(); });
    Promise.resolve(drawn).then(function () {
      var still = el.querySelectorAll(".slabkit-flame-static");
      for (var i = 0; i < still.length; i++) still[i].style.display = "none";
      el.setAttribute("data-flame-state", "drawn");
      plot.on("plotly_click", function (ev) {
        var pt = ev && ev.points && ev.points[0];
        if (pt) el.setAttribute("data-zoomed", String(pt.label));
      });
    });
    return {
      search: search, resetZoom: resetZoom, plot: plot,
      destroy: function () { Plotly.purge(plot); }
    };
  }

  function renderAll(root) {
    // the report: every <div class="slabkit-flame" data-spec-id=...> with its JSON in a
    // <script type="application/json" id=...>
    var nodes = (root || document).querySelectorAll(".slabkit-flame[data-spec-id]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      if (el.getAttribute("data-flame-state")) continue;
      var data = document.getElementById(el.getAttribute("data-spec-id"));
      if (!data) continue;
      render(el, JSON.parse(data.textContent));
    }
  }

  global.slabkitFlame = {render: render, renderAll: renderAll};
})(typeof self !== "undefined" ? self : this);
