/*
 * zerobatch's live dashboard (docs/dashboard.md). No build step: this file is served as is.
 *
 * Every `interval` seconds (2 by default; `?interval=S` in the page's address, 0.25 to 60) the
 * page fetches `metrics` (the same origin's /metrics), parses the Prometheus text format itself
 * and shows, per model and version, the workers, the queue, the requests in flight, the request
 * rate, the latency percentiles, the batch sizes, the refusals and the expirations, with charts
 * of the rate and the latency over the last ten minutes (uPlot, vendored beside this file).
 *
 * How the numbers are computed:
 *   - gauges: the newest scrape, summed over every label but model_name and model_version;
 *   - rates: a counter's increase from the oldest scrape of the last RATE_WINDOW_S seconds (at
 *     least the one before the newest) to the newest, divided by the seconds between the two
 *     scrapes; a value that goes down counts as a reset (the counter restarted from zero), as
 *     Prometheus' increase() does, without its extrapolation;
 *   - percentiles: Prometheus' histogram_quantile over the buckets' increase in the same window
 *     (summed by `le`), or over the totals since the server started when the window holds no
 *     observation; each panel says which ("last N s" or "since start").
 * The front ends label what a request that names no version did with model_version="default"
 * (TorchServe's label); zerobatch_default_version says which version that is, and the page
 * counts those series with it.
 * A family that is absent, or has no series for a model, shows "–". Each number is an element
 * with a data-testid (e.g. "queue-depth-echo-1.0") and its raw value in data-value (seconds for
 * latencies, per second for rates, "" when absent), so tests read the same numbers people see.
 * window.zerobatchDashboard exposes the parser and the arithmetic for tests.
 */
(function () {
  "use strict";

  const DEFAULT_INTERVAL_S = 2;
  const MIN_INTERVAL_S = 0.25;
  const MAX_INTERVAL_S = 60;
  const RATE_WINDOW_S = 10;
  const CHART_SPAN_S = 600;
  const FETCH_TIMEOUT_MS = 5000;
  const CHART_HEIGHT_PX = 220;
  const DASH = "\u2013";
  const QUANTILES = [["p50", 0.5], ["p90", 0.9], ["p99", 0.99]];
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
    "#db2777", "#4b5563", "#65a30d"];

  // The families read (the metrics process' names), with the sample names each is looked up by.
  const F = {
    queueDepth: ["zerobatch_queue_depth"],
    inFlight: ["zerobatch_in_flight_requests"],
    workers: ["zerobatch_workers"],
    refusals: ["zerobatch_refusals_total"],
    expired: ["zerobatch_expired_total"],
    requests: ["zerobatch_requests_total"],
    tsRequests: ["ts_inference_requests_total"],
    batchSize: "zerobatch_batch_size",
    queueSeconds: "zerobatch_queue_seconds",
    requestSeconds: "zerobatch_request_seconds",
    defaultVersion: ["zerobatch_default_version"],
    // TorchServe's names; prometheus_client appends _total to a counter's name
    requests2xx: ["Requests2XX", "Requests2XX_total"],
    requests4xx: ["Requests4XX", "Requests4XX_total"],
    requests5xx: ["Requests5XX", "Requests5XX_total"],
  };
  const WORKER_STATES = ["live", "desired", "min", "max"];

  // ------------------------------------------------------------------ Prometheus text format

  const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
  const LABEL_NAME_RE = /^[a-zA-Z_][a-zA-Z0-9_]*/;

  /** A sample value as Go's ParseFloat reads it ("+Inf", "NaN", "1e+06"), or null. */
  function parseValue(text) {
    const lower = text.toLowerCase();
    if (lower === "+inf" || lower === "inf") return Infinity;
    if (lower === "-inf") return -Infinity;
    if (lower === "nan") return NaN;
    if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text)) return null;
    return Number(text);
  }

  function skipBlanks(line, i) {
    while (line[i] === " " || line[i] === "\t") i++;
    return i;
  }

  /** One sample line -> {name, labels, value}, or null when the line is malformed. */
  function parseSample(line) {
    const nameMatch = NAME_RE.exec(line);
    if (!nameMatch) return null;
    const name = nameMatch[0];
    const labels = Object.create(null);
    let i = skipBlanks(line, name.length);
    if (line[i] === "{") {
      i = skipBlanks(line, i + 1);
      while (line[i] !== "}") {
        const labelMatch = LABEL_NAME_RE.exec(line.slice(i));
        if (!labelMatch) return null;
        i = skipBlanks(line, i + labelMatch[0].length);
        if (line[i] !== "=") return null;
        i = skipBlanks(line, i + 1);
        if (line[i] !== '"') return null;
        i++;
        let value = "";
        for (;;) {
          if (i >= line.length) return null;
          const ch = line[i];
          if (ch === '"') break;
          if (ch === "\\") {
            const next = line[i + 1];
            if (next === "n") value += "\n";
            else if (next === "\\" || next === '"') value += next;
            else return null;
            i += 2;
            continue;
          }
          value += ch;
          i++;
        }
        labels[labelMatch[0]] = value;
        i = skipBlanks(line, i + 1);
        if (line[i] === ",") i = skipBlanks(line, i + 1);
        else if (line[i] !== "}") return null;
      }
      i++;
    }
    let rest = line.slice(i);
    const exemplar = rest.indexOf(" # ");  // OpenMetrics exemplars follow the value
    if (exemplar >= 0) rest = rest.slice(0, exemplar);
    const fields = rest.trim().split(/[ \t]+/);
    if (fields.length > 2 || fields[0] === "") return null;
    const value = parseValue(fields[0]);
    if (value === null) return null;
    return { name, labels, value };
  }

  function seriesKey(labels) {
    return JSON.stringify(Object.keys(labels).sort().map((k) => [k, labels[k]]));
  }

  /**
   * The text format -> {samples: Map(sample name -> Map(series key -> {labels, value})),
   * types: Map(family -> type), errors: malformed lines (skipped)}.
   */
  function parsePrometheus(text) {
    const samples = new Map();
    const types = new Map();
    let errors = 0;
    for (const raw of String(text).split("\n")) {
      const line = raw.trim();
      if (line === "") continue;
      if (line[0] === "#") {
        const typeLine = /^#\s+TYPE\s+(\S+)\s+(\S+)/.exec(line);
        if (typeLine) types.set(typeLine[1], typeLine[2]);
        continue;
      }
      const sample = parseSample(line);
      if (sample === null) {
        errors++;
        continue;
      }
      let family = samples.get(sample.name);
      if (!family) samples.set(sample.name, (family = new Map()));
      family.set(seriesKey(sample.labels), { labels: sample.labels, value: sample.value });
    }
    return { samples, types, errors };
  }

  // ----------------------------------------------------------------------- histogram_quantile

  /**
   * Prometheus' histogram_quantile (promql/quantile.go, bucketQuantile) over cumulative buckets
   * [{le, count}]: NaN without a +Inf bucket, with fewer than two buckets or no observation; the
   * highest finite bound when the rank falls in the +Inf bucket; linear interpolation inside a
   * bucket, from 0 for the first one (when its bound is positive).
   */
  function histogramQuantile(q, buckets) {
    if (Number.isNaN(q)) return NaN;
    if (q < 0) return -Infinity;
    if (q > 1) return Infinity;
    const sorted = buckets.filter((b) => !Number.isNaN(b.le)).sort((a, b) => a.le - b.le);
    if (sorted.length < 2 || sorted[sorted.length - 1].le !== Infinity) return NaN;
    // coalesce equal bounds, then make the counts monotonic (as Prometheus does)
    const merged = [];
    for (const b of sorted) {
      const top = merged[merged.length - 1];
      if (top && top.le === b.le) top.count += b.count;
      else merged.push({ le: b.le, count: b.count });
    }
    let max = -Infinity;
    for (const b of merged) {
      if (b.count > max) max = b.count;
      else b.count = max;
    }
    if (merged.length < 2) return NaN;
    const observations = merged[merged.length - 1].count;
    if (!(observations > 0)) return NaN;
    let rank = q * observations;
    let b = merged.findIndex((bucket) => bucket.count >= rank);
    if (b < 0) b = merged.length - 1;
    if (b === merged.length - 1) return merged[merged.length - 2].le;
    if (b === 0 && merged[0].le <= 0) return merged[0].le;
    let start = 0;
    const end = merged[b].le;
    let count = merged[b].count;
    if (b > 0) {
      start = merged[b - 1].le;
      count -= merged[b - 1].count;
      rank -= merged[b - 1].count;
    }
    return start + (end - start) * (rank / count);
  }

  // ---------------------------------------------------------------------------- arithmetic

  /** model name -> its default version, from the newest scrape (computeView sets it). */
  let defaultVersions = new Map();

  /** The model a series belongs to, as "name\u0000version", or null for server-wide series;
   * model_version="default" is the model's default version where the scrape names it. */
  function modelKey(labels) {
    if (labels.model_name === undefined) return null;
    let version = labels.model_version || "";
    if (version === "default" && defaultVersions.has(labels.model_name)) {
      version = defaultVersions.get(labels.model_name);
    }
    return labels.model_name + "\u0000" + version;
  }

  /** Each model's default version, as the snapshot's zerobatch_default_version says. */
  function defaultVersionsOf(snapshot) {
    const versions = new Map();
    const fam = family(snapshot, F.defaultVersion);
    if (fam) {
      for (const { labels, value } of fam.values()) {
        if (value === 1 && labels.model_name !== undefined && labels.model_version) {
          versions.set(labels.model_name, labels.model_version);
        }
      }
    }
    return versions;
  }

  function family(snapshot, names) {
    for (const name of names) {
      const found = snapshot.samples.get(name);
      if (found) return found;
    }
    return null;
  }

  /** Sum of the newest values grouped by keyOf(labels) (null keys dropped): Map or null. */
  function sumLast(snapshot, names, keyOf) {
    const fam = family(snapshot, names);
    if (!fam) return null;
    const sums = new Map();
    for (const { labels, value } of fam.values()) {
      const key = keyOf(labels);
      if (key === null || Number.isNaN(value)) continue;
      sums.set(key, (sums.get(key) || 0) + value);
    }
    return sums;
  }

  /** One counter series' increase over the snapshots (a drop counts as a reset). */
  function seriesIncrease(snapshots, names, key) {
    let increase = 0;
    let previous = null;
    for (const snapshot of snapshots) {
      const fam = family(snapshot, names);
      const series = fam && fam.get(key);
      if (!series || Number.isNaN(series.value)) continue;
      if (previous !== null) {
        increase += series.value >= previous ? series.value - previous : series.value;
      }
      previous = series.value;
    }
    return increase;
  }

  /** Counter increases over the window grouped by keyOf(labels): Map, or null if absent. */
  function sumIncrease(snapshots, names, keyOf) {
    const newest = snapshots[snapshots.length - 1];
    const fam = family(newest, names);
    if (!fam) return null;
    const sums = new Map();
    for (const [key, { labels }] of fam) {
      const group = keyOf(labels);
      if (group === null) continue;
      sums.set(group, (sums.get(group) || 0) + seriesIncrease(snapshots, names, key));
    }
    return sums;
  }

  function leOf(labels) {
    const le = parseValue(labels.le === undefined ? "" : labels.le);
    return le === null ? NaN : le;
  }

  /** A bucket bound as it appears in a data-testid: "4", "0.25", "inf". */
  function leId(le) {
    return le === Infinity ? "inf" : String(le);
  }

  /**
   * A histogram family per model: Map(model key -> {basis, buckets: [{le, count}] cumulative,
   * sum, count}), over the window's increase when it holds observations, else since start.
   */
  function histograms(history, base, windowS) {
    const newest = history[history.length - 1];
    const bucketNames = [base + "_bucket"];
    const byLe = (labels) => {
      const model = modelKey(labels);
      return model === null || Number.isNaN(leOf(labels)) ? null : model + "\u0000" + leOf(labels);
    };
    const perModel = (sums, totals) => {
      const result = new Map();
      if (!sums) return result;
      for (const [key, count] of sums) {
        const cut = key.lastIndexOf("\u0000");
        const model = key.slice(0, cut);
        const le = Number(key.slice(cut + 1));
        if (!result.has(model)) result.set(model, { buckets: [] });
        result.get(model).buckets.push({ le, count });
      }
      for (const [model, entry] of result) {
        entry.buckets.sort((a, b) => a.le - b.le);
        const inf = entry.buckets[entry.buckets.length - 1];
        entry.count = inf && inf.le === Infinity ? inf.count : NaN;
        const total = totals ? totals.get(model) : undefined;
        entry.sum = total === undefined ? NaN : total;
      }
      return result;
    };
    const since = perModel(sumLast(newest, bucketNames, byLe), sumLast(newest, [base + "_sum"], modelKey));
    const windowed = history.length < 2 ? new Map()
      : perModel(sumIncrease(history, bucketNames, byLe), sumIncrease(history, [base + "_sum"], modelKey));
    const result = new Map();
    for (const [model, entry] of since) {
      const recent = windowed.get(model);
      if (recent && recent.count > 0) result.set(model, { basis: "last " + fmtSeconds(windowS), ...recent });
      else if (entry.count > 0) result.set(model, { basis: "since start", ...entry });
      else result.set(model, { basis: "no observations", ...entry });
    }
    return result;
  }

  function fmtSeconds(seconds) {
    return (seconds >= 10 ? seconds.toFixed(0) : seconds.toFixed(1)) + " s";
  }

  /**
   * The history of scrapes (oldest first, each {monoS, wallS, samples}) -> what the page shows:
   * {windowS, server: {...}, models: [{key, name, version, id, ...}]}; absent numbers are null.
   */
  function computeView(history) {
    const newest = history[history.length - 1];
    defaultVersions = defaultVersionsOf(newest);
    const hasWindow = history.length >= 2;
    const windowS = hasWindow ? newest.monoS - history[0].monoS : null;
    const models = new Map();
    const modelOf = (key) => {
      if (!models.has(key)) {
        const cut = key.indexOf("\u0000");
        const name = key.slice(0, cut);
        const version = key.slice(cut + 1);
        models.set(key, {
          key, name, version, id: name + "-" + version,
          workers: { live: null, desired: null, min: null, max: null },
          queueDepth: null, inFlight: null, requestsTotal: null, tsRequestsTotal: null,
          requestRate: null, refusals: new Map(), refusalsTotal: null, expiredTotal: null,
          latency: null, queueWait: null, batch: null,
        });
      }
      return models.get(key);
    };
    const last = (names, keyOf) => sumLast(newest, names, keyOf || modelKey);
    const rate = (names, keyOf) => {
      if (!hasWindow || !(windowS > 0)) return null;
      const increases = sumIncrease(history, names, keyOf || modelKey);
      if (!increases) return null;
      const rates = new Map();
      for (const [key, increase] of increases) rates.set(key, increase / windowS);
      return rates;
    };
    const each = (sums, apply) => {
      if (sums) for (const [key, value] of sums) apply(modelOf(key), value, key);
    };

    each(last(F.queueDepth), (m, v) => { m.queueDepth = v; });
    each(last(F.inFlight), (m, v) => { m.inFlight = v; });
    const workers = last(F.workers, (labels) => {
      const model = modelKey(labels);
      return model === null || !WORKER_STATES.includes(labels.state) ? null
        : model + "\u0001" + labels.state;
    });
    if (workers) {
      for (const [key, value] of workers) {
        const [model, state] = key.split("\u0001");
        modelOf(model).workers[state] = value;
      }
    }
    each(last(F.requests), (m, v) => { m.requestsTotal = v; });
    each(last(F.tsRequests), (m, v) => { m.tsRequestsTotal = v; });
    // zerobatch's own count where a model has one, else TorchServe's
    each(rate(F.tsRequests), (m, v) => { m.requestRate = v; });
    each(rate(F.requests), (m, v) => { m.requestRate = v; });
    each(last(F.expired), (m, v) => { m.expiredTotal = v; });
    const byReason = (labels) => {
      const model = modelKey(labels);
      return model === null ? null : model + "\u0001" + (labels.reason || "unknown");
    };
    const refusals = last(F.refusals, byReason);
    const refusalRates = rate(F.refusals, byReason);
    if (refusals) {
      for (const [key, value] of refusals) {
        const [model, reason] = key.split("\u0001");
        const entry = modelOf(model);
        entry.refusals.set(reason, {
          total: value, rate: refusalRates ? (refusalRates.get(key) ?? null) : null,
        });
        entry.refusalsTotal = (entry.refusalsTotal || 0) + value;
      }
    }
    const windowOrZero = windowS || 0;
    for (const [field, base] of [["latency", F.requestSeconds], ["queueWait", F.queueSeconds],
      ["batch", F.batchSize]]) {
      for (const [key, entry] of histograms(history, base, windowOrZero)) {
        const quantiles = {};
        for (const [label, q] of QUANTILES) {
          const value = histogramQuantile(q, entry.buckets);
          quantiles[label] = Number.isFinite(value) ? value : null;
        }
        modelOf(key)[field] = {
          basis: entry.basis,
          buckets: entry.buckets,
          count: Number.isFinite(entry.count) ? entry.count : null,
          mean: entry.count > 0 && Number.isFinite(entry.sum) ? entry.sum / entry.count : null,
          ...quantiles,
        };
      }
    }

    const serverTotal = (names) => {
      const sums = last(names, () => "all");
      return sums ? (sums.get("all") ?? null) : null;
    };
    const serverRate = (names) => {
      const rates = rate(names, () => "all");
      return rates ? (rates.get("all") ?? null) : null;
    };
    const server = {};
    for (const [field, names] of [["2xx", F.requests2xx], ["4xx", F.requests4xx],
      ["5xx", F.requests5xx]]) {
      server[field] = { total: serverTotal(names), rate: serverRate(names) };
    }
    server.inferenceRate = serverRate(F.tsRequests);
    server.requestRate = serverRate(F.requests);
    const list = [...models.values()].sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : a.version < b.version ? -1 : a.version > b.version ? 1 : 0);
    return { windowS, server, models: list };
  }

  // ------------------------------------------------------------------------------- display

  function fmtNumber(value) {
    if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
    if (Number.isInteger(value)) return String(value);
    const magnitude = Math.abs(value);
    if (magnitude >= 100) return value.toFixed(0);
    if (magnitude >= 10) return value.toFixed(1);
    return value.toPrecision(3).replace(/\.?0+$/, "") || "0";
  }

  function fmtRate(value) {
    return value === null || !Number.isFinite(value) ? DASH : fmtNumber(value) + "/s";
  }

  function fmtMs(seconds) {
    return seconds === null || !Number.isFinite(seconds) ? DASH : fmtNumber(seconds * 1000);
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }

  /** A number element: data-testid, raw value in data-value, formatted text ("–" if absent). */
  function num(testId, value, format) {
    const present = value !== null && value !== undefined && Number.isFinite(value);
    return el("span", {
      className: "num" + (present ? "" : " missing"),
      "data-testid": testId,
      "data-value": present ? String(value) : "",
      text: present ? (format || fmtNumber)(value) : DASH,
    });
  }

  function stat(label, ...values) {
    return el("div", { className: "stat" }, [el("div", { className: "label", text: label }),
      el("div", { className: "values" }, values)]);
  }

  function slash() {
    return el("span", { className: "sep", text: "/" });
  }

  function quantileRow(label, prefix, id, entry) {
    const parts = [];
    for (const [name] of QUANTILES) {
      if (parts.length) parts.push(slash());
      parts.push(num(`${prefix}-${name}-${id}`, entry ? entry[name] : null, fmtMs));
    }
    const row = stat(label + " p50 / p90 / p99, ms", ...parts);
    row.append(el("div", {
      className: "basis", "data-testid": `${prefix}-basis-${id}`,
      text: entry ? entry.basis : DASH,
    }));
    return row;
  }

  function batchPanel(id, batch) {
    const panel = el("div", { className: "stat batch" }, [
      el("div", { className: "label", text: "Batch size" }),
      el("div", { className: "values" }, [
        el("span", { className: "unit", text: "mean " }), num(`batch-mean-${id}`, batch ? batch.mean : null),
        el("span", { className: "unit", text: " over " }), num(`batch-count-${id}`, batch ? batch.count : null),
        el("span", { className: "unit", text: " batches" }),
      ]),
    ]);
    if (!batch || !batch.buckets.length) return panel;
    panel.append(el("div", { className: "basis", "data-testid": `batch-basis-${id}`, text: batch.basis }));
    const bars = el("div", { className: "bars" });
    let previous = 0;
    let lastBound = 0;
    const total = batch.count || 0;
    // buckets above the largest batch seen are left out (the server's go up to 512)
    const top = batch.buckets.findIndex((bucket) => bucket.count >= total);
    for (const { le, count } of batch.buckets.slice(0, top < 0 ? undefined : top + 1)) {
      const inBucket = Math.max(0, count - previous);
      previous = Math.max(previous, count);
      const label = le === Infinity ? "> " + fmtNumber(lastBound) : "\u2264 " + fmtNumber(le);
      if (le !== Infinity) lastBound = le;
      const bar = el("div", { className: "bar" });
      bar.style.width = (total > 0 ? (100 * inBucket) / total : 0).toFixed(1) + "%";
      bars.append(el("div", { className: "bar-row" }, [
        el("span", { className: "bar-label", text: label }),
        el("div", { className: "bar-track" }, [bar]),
        num(`batch-bucket-${leId(le)}-${id}`, inBucket),
      ]));
    }
    panel.append(bars);
    return panel;
  }

  function refusalPanel(id, model) {
    const panel = stat("Refused", num(`refusals-total-${id}`, model.refusalsTotal));
    const list = el("ul", { className: "reasons" });
    for (const reason of [...model.refusals.keys()].sort()) {
      const entry = model.refusals.get(reason);
      list.append(el("li", {}, [
        el("span", { className: "reason", text: reason }),
        num(`refusals-${reason}-${id}`, entry.total),
        el("span", { className: "unit", text: " (" }),
        num(`refusals-rate-${reason}-${id}`, entry.rate, fmtRate),
        el("span", { className: "unit", text: ")" }),
      ]));
    }
    if (model.refusals.size) panel.append(list);
    return panel;
  }

  function modelCard(model) {
    const id = model.id;
    const w = model.workers;
    return el("section", { className: "model", "data-testid": `model-${id}` }, [
      el("h2", {}, [el("span", { text: model.name }),
        el("span", { className: "version", text: model.version ? " v" + model.version : "" })]),
      el("div", { className: "grid" }, [
        stat("Workers live / desired / min / max", num(`workers-live-${id}`, w.live), slash(),
          num(`workers-desired-${id}`, w.desired), slash(), num(`workers-min-${id}`, w.min), slash(),
          num(`workers-max-${id}`, w.max)),
        stat("Queue depth", num(`queue-depth-${id}`, model.queueDepth)),
        stat("In flight", num(`in-flight-${id}`, model.inFlight)),
        stat("Request rate", num(`request-rate-${id}`, model.requestRate, fmtRate)),
        stat("Requests zerobatch / TorchServe count", num(`requests-total-${id}`, model.requestsTotal),
          slash(), num(`ts-requests-total-${id}`, model.tsRequestsTotal)),
        stat("Expired", num(`expired-${id}`, model.expiredTotal)),
        quantileRow("Latency", "latency", id, model.latency),
        quantileRow("Queue wait", "queue", id, model.queueWait),
        refusalPanel(id, model),
        batchPanel(id, model.batch),
      ]),
    ]);
  }

  function serverPanel(view) {
    const parts = [];
    for (const code of ["2xx", "4xx", "5xx"]) {
      const entry = view.server[code];
      parts.push(stat(`Requests ${code.toUpperCase()}`, num(`requests-${code}-total`, entry.total),
        el("span", { className: "unit", text: " (" }), num(`requests-${code}-rate`, entry.rate, fmtRate),
        el("span", { className: "unit", text: ")" })));
    }
    parts.push(stat("Inference rate (TorchServe count)",
      num("inference-requests-rate", view.server.inferenceRate, fmtRate)));
    parts.push(stat("Models", num("model-count", view.models.length)));
    return parts;
  }

  // ---------------------------------------------------------------------------------- charts

  const chartData = { xs: [], series: new Map() };  // id -> {rate: [], p50: [], p99: []}

  function recordPoints(view, wallS) {
    chartData.xs.push(wallS);
    const seen = new Set();
    for (const model of view.models) {
      seen.add(model.id);
      if (!chartData.series.has(model.id)) {
        const blank = () => new Array(chartData.xs.length - 1).fill(null);
        chartData.series.set(model.id, { rate: blank(), p50: blank(), p99: blank() });
      }
      const s = chartData.series.get(model.id);
      s.rate.push(model.requestRate);
      s.p50.push(model.latency && model.latency.p50 !== null ? model.latency.p50 * 1000 : null);
      s.p99.push(model.latency && model.latency.p99 !== null ? model.latency.p99 * 1000 : null);
    }
    for (const [id, s] of chartData.series) {
      if (!seen.has(id)) { s.rate.push(null); s.p50.push(null); s.p99.push(null); }
    }
    while (chartData.xs.length && chartData.xs[0] < wallS - CHART_SPAN_S) {
      chartData.xs.shift();
      for (const s of chartData.series.values()) { s.rate.shift(); s.p50.shift(); s.p99.shift(); }
    }
    for (const [id, s] of chartData.series) {
      if (s.rate.every((v) => v === null) && s.p99.every((v) => v === null) && !seen.has(id)) {
        chartData.series.delete(id);
      }
    }
  }

  const charts = { rate: null, latency: null, signature: "" };

  function chartWidth(container) {
    return Math.max(280, Math.floor(container.clientWidth || 600));
  }

  function makeChart(container, yLabel, series, data) {
    container.replaceChildren();
    return new window.uPlot({
      width: chartWidth(container),
      height: CHART_HEIGHT_PX,
      scales: { x: { time: true }, y: { range: (_u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{}, { label: yLabel, size: 60 }],
      legend: { live: false },
      series: [{}, ...series],
    }, data, container);
  }

  function drawCharts() {
    const rateBox = document.getElementById("rate-chart");
    const latencyBox = document.getElementById("latency-chart");
    if (!rateBox || !latencyBox) return;
    if (typeof window.uPlot !== "function") {
      rateBox.textContent = latencyBox.textContent = "charts unavailable (uPlot did not load)";
      return;
    }
    const ids = [...chartData.series.keys()];
    const rateData = [chartData.xs, ...ids.map((id) => chartData.series.get(id).rate)];
    const latencyData = [chartData.xs];
    for (const id of ids) latencyData.push(chartData.series.get(id).p50, chartData.series.get(id).p99);
    const signature = ids.join("\u0000");
    if (signature !== charts.signature || !charts.rate) {
      charts.signature = signature;
      if (charts.rate) charts.rate.destroy();
      if (charts.latency) charts.latency.destroy();
      const color = (i) => COLORS[i % COLORS.length];
      charts.rate = makeChart(rateBox, "requests/s", ids.map((id, i) => ({
        label: id, stroke: color(i), width: 2, spanGaps: false,
      })), rateData);
      const latencySeries = [];
      ids.forEach((id, i) => {
        latencySeries.push({ label: id + " p50", stroke: color(i), width: 1.5, dash: [6, 4] });
        latencySeries.push({ label: id + " p99", stroke: color(i), width: 2 });
      });
      charts.latency = makeChart(latencyBox, "ms", latencySeries, latencyData);
    } else {
      charts.rate.setData(rateData);
      charts.latency.setData(latencyData);
    }
  }

  window.addEventListener("resize", () => {
    for (const [chart, boxId] of [[charts.rate, "rate-chart"], [charts.latency, "latency-chart"]]) {
      const box = document.getElementById(boxId);
      if (chart && box) chart.setSize({ width: chartWidth(box), height: CHART_HEIGHT_PX });
    }
  });

  // ---------------------------------------------------------------------------------- polling

  const history = [];
  let scrapes = 0;
  let parseErrors = 0;

  function intervalS() {
    const asked = Number(new URLSearchParams(window.location.search).get("interval"));
    if (!Number.isFinite(asked) || asked <= 0) return DEFAULT_INTERVAL_S;
    return Math.min(MAX_INTERVAL_S, Math.max(MIN_INTERVAL_S, asked));
  }

  function setStatus(ok, text) {
    const status = document.querySelector('[data-testid="scrape-status"]');
    if (!status) return;
    status.textContent = text;
    status.className = "scrape-status " + (ok ? "ok" : "error");
  }

  function render(view) {
    const replace = (selector, nodes) => {
      const box = document.getElementById(selector);
      if (box) box.replaceChildren(...nodes);
    };
    replace("server", serverPanel(view));
    replace("models", view.models.length ? view.models.map(modelCard)
      : [el("p", { className: "empty", text: "No model reports metrics yet." })]);
    replace("scrape-info", [
      el("span", { text: "scrapes " }), num("scrape-count", scrapes),
      el("span", { text: " \u00b7 rates over " }), num("rate-window-s", view.windowS, fmtSeconds),
      el("span", { text: " \u00b7 malformed lines " }), num("parse-errors", parseErrors),
      el("span", { text: " \u00b7 last " }),
      el("span", { "data-testid": "last-scrape", text: new Date().toLocaleTimeString() }),
    ]);
  }

  async function scrapeOnce() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("metrics", {
        cache: "no-store", headers: { Accept: "text/plain" }, signal: controller.signal,
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const text = await response.text();
      const parsed = parsePrometheus(text);
      parseErrors = parsed.errors;
      const snapshot = { monoS: performance.now() / 1000, wallS: Date.now() / 1000, samples: parsed.samples };
      history.push(snapshot);
      while (history.length > 2 && snapshot.monoS - history[0].monoS > RATE_WINDOW_S) history.shift();
      scrapes++;
      const view = computeView(history);
      recordPoints(view, snapshot.wallS);
      render(view);
      setStatus(true, "ok");
      try {
        drawCharts();
      } catch (error) {
        console.error("zerobatch dashboard: charts", error);
      }
    } catch (error) {
      setStatus(false, "error: " + (error && error.name === "AbortError" ? "timed out" : (error && error.message) || error));
    } finally {
      clearTimeout(timer);
    }
  }

  async function loop() {
    await scrapeOnce();
    setTimeout(loop, intervalS() * 1000);
  }

  window.zerobatchDashboard = { parsePrometheus, parseValue, histogramQuantile, computeView, fmtNumber };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", loop);
  else loop();
})();
