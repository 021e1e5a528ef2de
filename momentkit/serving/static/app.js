// momentkit search page: pick or upload a video, describe a moment, see and play the moments.
// Plain ES module, no dependencies. Text from the server is only ever set as textContent.

const SVG = "http://www.w3.org/2000/svg";
const $ = (selector) => document.querySelector(selector);

const els = {
  mode: $("#mode"),
  fileInput: $("#file-input"),
  dropzone: $("#dropzone"),
  uploadHint: $("#upload-hint"),
  progress: $("#upload-progress"),
  progressBar: $("#upload-progress .bar"),
  uploadStatus: $("#upload-status"),
  videoList: $("#video-list"),
  noVideos: $("#no-videos"),
  form: $("#search-form"),
  query: $("#query"),
  searchVideo: $("#search-video"),
  searchLibrary: $("#search-library"),
  searchStatus: $("#search-status"),
  title: $("#video-title"),
  meta: $("#video-meta"),
  player: $("#player"),
  timeline: $("#timeline"),
  minScore: $("#min-score"),
  moments: $("#moments"),
  momentsFor: $("#moments-for"),
  momentsDownloads: $("#moments-downloads"),
  noMoments: $("#no-moments"),
  libraryPanel: $("#library-panel"),
  libraryFor: $("#library-for"),
  libraryResults: $("#library-results"),
  libraryEmpty: $("#library-empty"),
};

const state = {
  info: null,
  videos: [],
  current: null, // the selected video {id, name, source, duration, url}
  result: null, // {query, moments, saliency, clip_len, duration, ...} for the current video
  resultNote: "", // why the moments panel is empty (set when a library search clears it)
  library: null, // the last library search's answer
  active: -1, // index of the moment being played
  stopAt: null, // seconds at which playback pauses (end of the moment being played)
};

// ------------------------------------------------------------------------------ helpers
function fmtTime(seconds) {
  const s = Math.max(0, seconds || 0);
  const m = Math.floor(s / 60);
  return `${m}:${(s - 60 * m).toFixed(1).padStart(4, "0")}`;
}

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function node(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function svgNode(tag, attrs = {}, className = "") {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (className) el.setAttribute("class", className);
  return el;
}

function fmtRelevance(value) {
  return value === null || value === undefined ? "-" : value.toFixed(2);
}

// best to three decimals, with more digits when rounding would make it reach the threshold
function belowText(best, threshold) {
  let text = best.toFixed(3);
  if (threshold !== null && threshold !== undefined && Number(text) >= threshold) {
    text = (Math.floor(best * 1000) / 1000).toFixed(3);
    if (Number(text) >= threshold) text = best.toPrecision(6);
  }
  return text;
}

// "No confident match for “q” in this video (best relevance 0.123 < 0.5)."
function noMatchText(query, where, best, threshold) {
  if (best === null || best === undefined) return `No confident match for “${query}” in ${where} (no calibrated relevance).`;
  const limit = threshold === null || threshold === undefined ? "" : ` < ${threshold}`;
  return `No confident match for “${query}” in ${where} (best relevance ${belowText(best, threshold)}${limit}).`;
}

function minScore() {
  const raw = els.minScore.value.trim();
  if (!raw) return null;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0 || value > 1) throw new Error("min relevance must be a number from 0 to 1");
  return value;
}

// ----------------------------------------------------------------------------- downloads
function slug(text) {
  return (text || "results").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "results";
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = node("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// RFC 4180: quote every field holding a comma, a quote or a line break; double the quotes
function csvField(value) {
  if (value === null || value === undefined) return "";
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function csvText(header, rows) {
  return [header, ...rows].map((row) => row.map(csvField).join(",")).join("\r\n") + "\r\n";
}

// the columns of `momentkit search --export csv:` (no exported clips on the page)
const CSV_COLUMNS = ["qid", "query", "video", "vid", "rank", "start", "end", "score", "relevance"];

function stem(name) {
  return name.replace(/\.[^.]*$/, "");
}

function videoCsv(download) {
  const rows = [];
  download.results.forEach((r, qi) => {
    r.moments.forEach((m, i) => {
      rows.push([qi + 1, r.query, download.video.name, stem(download.video.name), i + 1, m.start, m.end, m.score, m.relevance]);
    });
  });
  return csvText(CSV_COLUMNS, rows);
}

function libraryCsv(data) {
  const rows = data.moments.map((m, i) => [
    1, data.query, m.name, stem(m.name), i + 1, m.start, m.end, m.score, m.relevance, m.moment_score, m.video_score,
  ]);
  return csvText([...CSV_COLUMNS, "moment_score", "video_score"], rows);
}

function downloadMoments(format) {
  const data = state.result?.download;
  if (!data) return;
  const name = `momentkit-${slug(stem(data.video.name))}-${slug(data.results[0]?.query)}`;
  if (format === "json") download(`${name}.json`, "application/json", JSON.stringify(data, null, 2) + "\n");
  else download(`${name}.csv`, "text/csv", videoCsv(data));
}

function downloadLibrary(format) {
  const data = state.library;
  if (!data) return;
  const name = `momentkit-library-${slug(data.query)}`;
  if (format === "json") download(`${name}.json`, "application/json", JSON.stringify(data, null, 2) + "\n");
  else download(`${name}.csv`, "text/csv", libraryCsv(data));
}

function errorDetail(data, response) {
  if (data && typeof data.detail === "string") return data.detail;
  if (data && Array.isArray(data.detail)) return data.detail.map((d) => d.msg).join("; ");
  return `${response.status} ${response.statusText}`;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new Error(errorDetail(data, response));
  return data;
}

function postJSON(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

// -------------------------------------------------------------------------------- videos
function renderVideoList() {
  els.videoList.replaceChildren();
  for (const video of state.videos) {
    const button = node("button", "video-item");
    button.type = "button";
    button.dataset.id = video.id;
    button.title = video.name;
    button.append(node("span", "name", video.name));
    const tag = `${video.source === "upload" ? "upload" : "library"} · ${fmtTime(video.duration)}`;
    button.append(node("span", "tag", tag));
    button.classList.toggle("active", state.current?.id === video.id);
    button.addEventListener("click", () => selectVideo(video.id));
    const li = node("li");
    li.append(button);
    els.videoList.append(li);
  }
  els.noVideos.hidden = state.videos.length > 0;
}

async function loadVideos() {
  const data = await api("/api/videos");
  state.videos = data.videos;
  renderVideoList();
}

function selectVideo(id, { keepResult = false } = {}) {
  const video = state.videos.find((v) => v.id === id);
  if (!video) return;
  const changed = state.current?.id !== id;
  state.current = video;
  if (changed) {
    state.stopAt = null;
    els.player.src = video.url;
    els.player.load();
  }
  if (!keepResult) {
    state.result = null;
    state.resultNote = "";
    state.active = -1;
    renderMoments();
  }
  els.title.textContent = video.name;
  els.meta.textContent = `${video.source} · ${fmtTime(video.duration)}`;
  renderVideoList();
  drawTimeline();
}

// -------------------------------------------------------------------------------- upload
function upload(file) {
  const maxMb = state.info?.max_upload_mb ?? Infinity;
  if (file.size > maxMb * 1024 * 1024) {
    setStatus(els.uploadStatus, `${file.name} is larger than the ${maxMb} MiB limit`, true);
    return;
  }
  const body = new FormData();
  body.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/videos");
  xhr.responseType = "json";
  els.progress.hidden = false;
  els.progressBar.style.width = "0%";
  setStatus(els.uploadStatus, `uploading ${file.name}…`);
  xhr.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) {
      els.progressBar.style.width = `${((100 * event.loaded) / event.total).toFixed(1)}%`;
    }
  });
  xhr.addEventListener("load", async () => {
    els.progress.hidden = true;
    if (xhr.status === 201) {
      const video = xhr.response.video;
      setStatus(els.uploadStatus, `uploaded ${video.name}`);
      await loadVideos();
      selectVideo(video.id);
      els.query.focus();
    } else {
      const detail = xhr.response?.detail;
      setStatus(els.uploadStatus, `upload failed: ${typeof detail === "string" ? detail : xhr.status}`, true);
    }
  });
  xhr.addEventListener("error", () => {
    els.progress.hidden = true;
    setStatus(els.uploadStatus, "upload failed: the server could not be reached", true);
  });
  xhr.send(body);
}

// -------------------------------------------------------------------------------- search
function setBusy(busy) {
  els.searchVideo.disabled = busy;
  els.searchLibrary.disabled = busy;
}

async function searchVideo() {
  const query = els.query.value.trim();
  if (!query) return;
  if (!state.current) {
    setStatus(els.searchStatus, "pick or upload a video first", true);
    return;
  }
  setBusy(true);
  setStatus(els.searchStatus, `searching ${state.current.name}…`);
  try {
    const data = await postJSON(`/api/videos/${encodeURIComponent(state.current.id)}/search`, {
      queries: [query],
      top_k: 10,
      min_relevance: minScore(),
    });
    showResult({ ...data.results[0], download: data });
    setStatus(els.searchStatus, `${data.results[0].moments.length} moments in ${data.seconds.toFixed(2)} s`);
  } catch (err) {
    setStatus(els.searchStatus, `search failed: ${err.message}`, true);
  } finally {
    setBusy(false);
  }
}

async function searchLibrary() {
  const query = els.query.value.trim();
  if (!query) {
    els.query.reportValidity();
    return;
  }
  setBusy(true);
  setStatus(els.searchStatus, "searching the library…");
  try {
    const data = await postJSON("/api/search", { query, top_k: 10, min_relevance: minScore() });
    renderLibrary(data);
    // the moments panel follows the new query: this video's answer to it, or nothing
    const mine = state.current && data.videos.find((v) => v.video === state.current.id);
    if (mine) showResult(libraryVideoResult(data, mine));
    else {
      state.result = null;
      state.resultNote = state.current
        ? `“${query}” was searched across the library; ${state.current.name} is not among its candidate videos. Search video to find its moments.`
        : "";
      state.active = -1;
      renderMoments();
      drawTimeline();
    }
    const t = data.timings || {};
    setStatus(
      els.searchStatus,
      `${data.moments.length} moments from ${data.videos.length} videos in ${(t.total || 0).toFixed(2)} s ` +
        `(coarse retrieval ${((t.coarse || 0) * 1000).toFixed(1)} ms)`,
    );
  } catch (err) {
    setStatus(els.searchStatus, `library search failed: ${err.message}`, true);
  } finally {
    setBusy(false);
  }
}

function showResult(result) {
  state.result = result;
  state.resultNote = "";
  state.active = -1;
  renderMoments();
  drawTimeline();
}

// one candidate video of a library answer, as the moments panel shows it (and downloads it)
function libraryVideoResult(data, video) {
  const result = { query: data.query, ...video };
  const named = { id: video.video, name: video.name, source: "library", duration: video.duration, url: video.url };
  return { ...result, download: { video: named, results: [result] } };
}

// ------------------------------------------------------------------------------- moments
function momentButton(rank, label, sub, onClick) {
  const button = node("button", "moment-btn");
  button.type = "button";
  if (rank === 1) button.classList.add("first");
  button.append(node("span", "rank", String(rank)));
  const text = node("span", "when", label);
  text.append(node("span", "sub", sub));
  button.append(text);
  button.append(node("span", "play", "▶ play"));
  button.addEventListener("click", onClick);
  return button;
}

function renderMoments() {
  els.moments.replaceChildren();
  const result = state.result;
  const moments = result?.moments ?? [];
  els.momentsFor.hidden = !result;
  els.momentsFor.textContent = result ? `for “${result.query}”` : "";
  els.momentsDownloads.hidden = !result?.download;
  moments.forEach((m, i) => {
    const label = `${fmtTime(m.start)} – ${fmtTime(m.end)}`;
    const sub = `${(m.end - m.start).toFixed(1)} s · relevance ${fmtRelevance(m.relevance)} · score ${m.score.toPrecision(3)}`;
    const button = momentButton(i + 1, label, sub, () => playMoment(i));
    button.classList.add("moment");
    button.dataset.start = m.start;
    button.dataset.end = m.end;
    button.classList.toggle("active", i === state.active);
    const li = node("li");
    li.append(button);
    els.moments.append(li);
  });
  els.noMoments.hidden = moments.length > 0;
  if (result && !moments.length) {
    els.noMoments.textContent = result.no_confident_match
      ? noMatchText(result.query, "this video", result.best_relevance, result.min_relevance)
      : "No moment found for this query.";
  } else if (!result) {
    els.noMoments.textContent = state.resultNote || "Pick or upload a video, then describe a moment.";
  }
}

function renderLibrary(data) {
  state.library = data;
  els.libraryPanel.hidden = false;
  els.libraryResults.replaceChildren();
  els.libraryFor.textContent = `for “${data.query}”`;
  els.libraryEmpty.hidden = data.moments.length > 0;
  els.libraryEmpty.textContent = data.no_confident_match
    ? noMatchText(data.query, "the library", data.best_relevance, data.min_relevance)
    : "No moment found for this query.";
  data.moments.forEach((m, i) => {
    const label = `${fmtTime(m.start)} – ${fmtTime(m.end)}`;
    const sub = `${m.name} · relevance ${fmtRelevance(m.relevance)} · score ${m.score.toPrecision(3)}`;
    const button = momentButton(i + 1, label, sub, () => {
      const video = data.videos.find((v) => v.video === m.video);
      selectVideo(m.video, { keepResult: true });
      if (video) showResult(libraryVideoResult(data, video));
      const index = (state.result?.moments ?? []).findIndex(
        (x) => Math.abs(x.start - m.start) < 1e-3 && Math.abs(x.end - m.end) < 1e-3,
      );
      if (index >= 0) playMoment(index);
      else playSpan(m.start, m.end);
    });
    button.classList.add("library-moment");
    button.dataset.video = m.video;
    button.dataset.start = m.start;
    button.dataset.end = m.end;
    const li = node("li");
    li.append(button);
    els.libraryResults.append(li);
  });
}

function playSpan(start, end) {
  const player = els.player;
  state.stopAt = end;
  const go = () => {
    player.currentTime = start;
    player.play().catch(() => {});
    watchStop();
  };
  if (player.readyState >= 1) go();
  else player.addEventListener("loadedmetadata", go, { once: true });
}

function playMoment(index) {
  const m = state.result?.moments?.[index];
  if (!m) return;
  state.active = index;
  renderMoments();
  drawTimeline();
  playSpan(m.start, m.end);
}

// Pause exactly at the end of the moment: check every animation frame while it plays.
function watchStop() {
  const player = els.player;
  const tick = () => {
    if (state.stopAt === null) return;
    if (player.currentTime >= state.stopAt - 0.02 || player.ended) {
      player.pause();
      player.currentTime = Math.min(state.stopAt, player.duration || state.stopAt);
      state.stopAt = null;
      return;
    }
    if (!player.paused || player.seeking) requestAnimationFrame(tick);
    else state.stopAt = null; // paused by the user
  };
  requestAnimationFrame(tick);
}

// ------------------------------------------------------------------------------ timeline
const PAD = { left: 8, right: 8, top: 8, bottom: 20 };
const BAND = 18; // height of the moments band

function timelineDuration() {
  return state.result?.duration || state.current?.duration || els.player.duration || 0;
}

function drawTimeline() {
  const svg = els.timeline;
  const width = svg.clientWidth || 800;
  const height = svg.clientHeight || 128;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const duration = timelineDuration();
  const x0 = PAD.left;
  const x1 = width - PAD.right;
  const top = PAD.top;
  const bottom = height - PAD.bottom;
  svg.append(svgNode("rect", { x: x0, y: top, width: x1 - x0, height: bottom - top, rx: 6 }, "track"));
  if (!duration) {
    const text = svgNode("text", { x: width / 2, y: (top + bottom) / 2 + 4, "text-anchor": "middle" }, "placeholder");
    text.textContent = "the saliency curve and the moments appear here";
    svg.append(text);
    return;
  }
  const x = (t) => x0 + ((x1 - x0) * Math.min(Math.max(t, 0), duration)) / duration;

  // time axis: about one tick per 90 px
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];
  const step = steps.find((s) => ((x1 - x0) * s) / duration >= 90) || steps[steps.length - 1];
  for (let t = 0; t <= duration + 1e-6; t += step) {
    svg.append(svgNode("line", { x1: x(t), x2: x(t), y1: top, y2: bottom }, "grid"));
    const label = svgNode("text", { x: x(t), y: height - 5, "text-anchor": "middle" }, "tick");
    label.textContent = fmtTime(t).replace(/\.0$/, "");
    svg.append(label);
    // keep the label inside the timeline: a tick near either end is labelled inwards
    const half = (label.getComputedTextLength?.() || 24) / 2;
    label.setAttribute("x", Math.min(Math.max(x(t), half + 1), width - half - 1));
  }

  const result = state.result;
  const curveTop = top + BAND + 6;
  if (result && result.saliency.length) {
    // saliency curve: one point per clip centre, scaled to the video's min..max
    const s = result.saliency;
    const lo = Math.min(...s);
    const hi = Math.max(...s);
    const y = (v) => bottom - 2 - ((bottom - 2 - curveTop) * (hi > lo ? (v - lo) / (hi - lo) : 0.5));
    const points = s.map((v, i) => {
      const t0 = i * result.clip_len;
      const t1 = Math.min((i + 1) * result.clip_len, result.duration);
      return [x((t0 + t1) / 2), y(v)];
    });
    const line = points.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
    const area = `${line} L${points[points.length - 1][0].toFixed(1)},${bottom} L${points[0][0].toFixed(1)},${bottom} Z`;
    // moments: a faint span over the curve, a bar in the band above it
    result.moments.forEach((m, i) => {
      if (i === state.active || i === 0) {
        svg.append(svgNode("rect", { x: x(m.start), y: curveTop, width: Math.max(x(m.end) - x(m.start), 2), height: bottom - curveTop }, "moment-span"));
      }
    });
    svg.append(svgNode("path", { d: area }, "sal-area"));
    svg.append(svgNode("path", { d: line }, "sal-line"));
    // draw lower-ranked moments first so the best one is on top
    [...result.moments.keys()].reverse().forEach((i) => {
      const m = result.moments[i];
      const cls = ["moment", i === 0 ? "best" : "", i === state.active ? "active" : ""].join(" ").trim();
      const w = Math.max(x(m.end) - x(m.start), 3);
      const rect = svgNode("rect", { x: x(m.start), y: top + 3, width: w, height: BAND - 4, rx: 3 }, cls);
      rect.dataset.index = i;
      const title = svgNode("title");
      title.textContent = `#${i + 1} ${fmtTime(m.start)} – ${fmtTime(m.end)} (relevance ${fmtRelevance(m.relevance)}, score ${m.score.toPrecision(3)})`;
      rect.append(title);
      rect.addEventListener("click", (event) => {
        event.stopPropagation();
        playMoment(i);
      });
      svg.append(rect);
      if (w > 22) {
        const label = svgNode("text", { x: x(m.start) + 5, y: top + BAND - 4 }, "moment-label");
        label.textContent = `#${i + 1}`;
        svg.append(label);
      }
    });
  }
  const head = svgNode("line", { x1: 0, x2: 0, y1: top, y2: bottom }, "playhead");
  head.id = "playhead";
  svg.append(head);
  updatePlayhead();
}

function updatePlayhead() {
  const head = document.getElementById("playhead");
  const duration = timelineDuration();
  if (!head || !duration) return;
  const width = els.timeline.clientWidth || 800;
  const px = PAD.left + ((width - PAD.left - PAD.right) * Math.min(els.player.currentTime, duration)) / duration;
  head.setAttribute("x1", px);
  head.setAttribute("x2", px);
}

function seekFromTimeline(event) {
  const duration = timelineDuration();
  if (!duration || !state.current) return;
  const box = els.timeline.getBoundingClientRect();
  const frac = (event.clientX - box.left - PAD.left) / (box.width - PAD.left - PAD.right);
  state.stopAt = null;
  els.player.currentTime = Math.min(Math.max(frac, 0), 1) * duration;
}

// ---------------------------------------------------------------------------------- init
async function init() {
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    searchVideo();
  });
  els.searchLibrary.addEventListener("click", searchLibrary);
  $("#download-moments-json").addEventListener("click", () => downloadMoments("json"));
  $("#download-moments-csv").addEventListener("click", () => downloadMoments("csv"));
  $("#download-library-json").addEventListener("click", () => downloadLibrary("json"));
  $("#download-library-csv").addEventListener("click", () => downloadLibrary("csv"));
  els.fileInput.addEventListener("change", () => {
    if (els.fileInput.files.length) upload(els.fileInput.files[0]);
    els.fileInput.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    els.dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      els.dropzone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    els.dropzone.addEventListener(type, () => els.dropzone.classList.remove("over"));
  }
  els.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
  });
  els.timeline.addEventListener("click", seekFromTimeline);
  for (const type of ["timeupdate", "seeked", "loadedmetadata"]) {
    els.player.addEventListener(type, updatePlayhead);
  }
  els.player.addEventListener("loadedmetadata", () => {
    if (!state.result) drawTimeline();
  });
  els.player.addEventListener("play", () => {
    const loop = () => {
      updatePlayhead();
      if (!els.player.paused) requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  });
  window.addEventListener("resize", drawTimeline);

  try {
    state.info = await api("/api/info");
    const info = state.info;
    els.mode.replaceChildren();
    const lib = info.library;
    els.mode.append(node("span", "", lib ? `library: ${lib.videos} videos, ${lib.clips} clips` : "uploads only"));
    if (info.encoder) els.mode.append(node("span", "pill", info.encoder));
    els.mode.append(node("span", "pill", info.checkpoint ? `model ${info.checkpoint}` : "zero-shot"));
    els.searchLibrary.hidden = !lib;
    els.uploadHint.textContent = info.read_only
      ? "uploads are turned off on this server (read-only)"
      : `drop a file here or click · up to ${info.max_upload_mb} MiB`;
    els.fileInput.disabled = Boolean(info.read_only);
    await loadVideos();
    if (state.videos.length) selectVideo(state.videos[0].id);
    else drawTimeline();
  } catch (err) {
    setStatus(els.searchStatus, `cannot reach the server: ${err.message}`, true);
  }
  document.body.dataset.ready = "1";
}

init();
