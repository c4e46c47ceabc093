// The live page: one EventSource for the market channels of a symbol, one for
// the private channels when a token is given. Numbers arrive as exact decimal
// strings and are shown as such; the charts alone convert them to draw.
"use strict";

const FIAT = new Set(["USD", "EUR", "GBP", "JPY", "KRW", "CNY", "HKD", "AUD", "CAD", "SGD"]);
const RANGES = ["1m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d", "1w"];
const LEVELS = 12;
const TAPE = 30;
const $ = (id) => document.getElementById(id);

let market = null;      // EventSource of the market channels
let account = null;     // EventSource of the private channels
let panels = {};        // channel name → panel element
const statuses = {};    // channel name → {status, reason}

// --- charts -----------------------------------------------------------------

const chartLayout = { layout: { background: { color: "#1a1e24" }, textColor: "#c0c6cf" },
  grid: { vertLines: { color: "#242a31" }, horzLines: { color: "#242a31" } } };
// The depth chart's horizontal axis is the price; it is fitted to both sides
// of the book at every update, with room for the last price label.
const depthChart = LightweightCharts.createOptionsChart($("depth-chart"),
  { ...chartLayout, autoSize: true, timeScale: { minBarSpacing: 0.001 },
    rightPriceScale: { scaleMargins: { top: 0.12, bottom: 0.04 } } });
const bidsDepth = depthChart.addSeries(LightweightCharts.AreaSeries,
  { lineColor: "#26a69a", topColor: "rgba(38,166,154,0.4)", bottomColor: "rgba(38,166,154,0.05)" });
const asksDepth = depthChart.addSeries(LightweightCharts.AreaSeries,
  { lineColor: "#ef5350", topColor: "rgba(239,83,80,0.4)", bottomColor: "rgba(239,83,80,0.05)" });
// Candles start at the left edge while there are few of them, at a readable width.
const candleChart = LightweightCharts.createChart($("candle-chart"),
  { ...chartLayout, autoSize: true,
    timeScale: { timeVisible: true, fixLeftEdge: true, barSpacing: 14, rightOffset: 3 } });
const candles = candleChart.addSeries(LightweightCharts.CandlestickSeries, {});

// --- helpers ----------------------------------------------------------------

function normalize(text) {
  const m = text.trim().toUpperCase().match(/^([A-Z0-9]{2,12})[_\/-]([A-Z0-9]{2,12})$/);
  return m ? `${m[1]}_${m[2]}` : null;
}

function stepsFor(symbol) {
  return FIAT.has(symbol.split("_")[1]) ? ["1.0", "0.1", "0.01"] : ["0.0001", "0.000001", "0.00000001"];
}

function fillSelect(select, values, wanted) {
  select.innerHTML = values.map((v) => `<option>${v}</option>`).join("");
  select.value = values.includes(wanted) ? wanted : values[values.length - 1];
}

function row(cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}

// Exact decimals, shown readably: trailing zeros trimmed ("11.880000" → "11.88").
// The exact string stays in the cell's title.
function trimmed(decimal) {
  return decimal.includes(".") ? decimal.replace(/0+$/, "").replace(/\.$/, "") : decimal;
}

function decimalCell(tr, index, decimal) {
  const td = tr.children[index];
  td.textContent = trimmed(decimal);
  td.title = decimal;
}

function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

function candle(data) {
  return { time: data.open_ts / 1000, open: Number(data.open), high: Number(data.high),
    low: Number(data.low), close: Number(data.close) };
}

async function getJSON(url, headers) {
  const response = await fetch(url, { headers: headers || {} });
  return { status: response.status, body: response.status === 304 ? null : await response.json() };
}

// --- book diffs ---------------------------------------------------------------
// The market stream asks for books=diff: an order book or depth chart comes
// whole first, then as level diffs with a CRC32 checksum (docs/api.md, "Book
// diffs"). Each diff is applied to the book held, and shown only once its
// prev_seq and checksum prove it; otherwise the channel is asked for again.

const books = {};       // channel name → the envelope of its newest proven book
const bookChecks = { diffs: 0, mismatches: 0 };
let lastEventId = "";   // the market stream's newest id (a new EventSource resumes from it)

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(text) {
  let crc = 0xffffffff;
  for (let i = 0; i < text.length; i++) crc = CRC_TABLE[(crc ^ text.charCodeAt(i)) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function checksum(book) {
  const digits = (text) => text.replace(".", "").replace(/^0+/, "");
  const levels = [...book.asks.slice(0, 10), ...book.bids.slice(0, 10)];
  return crc32(levels.map(([p, q]) => digits(p) + digits(q)).join(""));
}

// Exact comparison of two non-negative decimal strings (no floats).
function compareDecimals(a, b) {
  const [ai, af = ""] = a.split(".");
  const [bi, bf = ""] = b.split(".");
  const ia = ai.replace(/^0+/, ""), ib = bi.replace(/^0+/, "");
  if (ia.length !== ib.length) return ia.length - ib.length;
  if (ia !== ib) return ia < ib ? -1 : 1;
  const width = Math.max(af.length, bf.length);
  const fa = af.padEnd(width, "0"), fb = bf.padEnd(width, "0");
  return fa === fb ? 0 : fa < fb ? -1 : 1;
}

function applyDiff(book, data) {
  const result = { ...book };
  for (const [key, value] of Object.entries(data)) if (key !== "bids" && key !== "asks") result[key] = value;
  for (const side of ["bids", "asks"]) {
    const levels = new Map(book[side]);
    for (const [price, quantity] of data[side] || []) {
      if (quantity === "0") levels.delete(price); else levels.set(price, quantity);
    }
    const order = side === "bids" ? -1 : 1;
    result[side] = [...levels.entries()].sort((x, y) => order * compareDecimals(x[0], y[0]));
  }
  return result;
}

function renderChecks() {
  $("book-check").textContent = `${bookChecks.diffs} diffs · ${bookChecks.mismatches} mismatches`;
  $("book-check").dataset.mismatches = String(bookChecks.mismatches);
}

// A whole book (an event "orderbook"/"depth") or a diff: the envelope to show, or null.
function proveBook(name, event) {
  const body = JSON.parse(event.data);
  if (!name.endsWith("_diff")) {
    books[body.channel] = body;
    return body;
  }
  const held = books[body.channel];
  bookChecks.diffs += 1;
  if (held && held.seq === body.prev_seq) {
    const data = applyDiff(held.data, body.data);
    if (checksum(data) === body.checksum) {
      const envelope = { channel: body.channel, symbol: body.symbol, seq: body.seq,
        exchange_ts: body.exchange_ts, received_ts: body.received_ts, stale: false, data };
      books[body.channel] = envelope;
      renderChecks();
      return envelope;
    }
  }
  bookChecks.mismatches += 1;
  delete books[body.channel];
  renderChecks();
  // Ask again, whole, for every book the page does not hold a proven copy of.
  openMarket(Object.keys(panels).filter((c) => /^(orderbook|depth):/.test(c) && !(c in books)));
  return null;
}

// --- status -----------------------------------------------------------------

function setStatus(channel, status, reason) {
  statuses[channel] = { status, reason };
  const panel = panels[channel];
  if (panel) panel.dataset.status = status;
  renderStatuses();
}

function renderStatuses() {
  const body = $("status").tBodies[0];
  body.replaceChildren(...Object.entries(statuses).sort().map(([name, s]) => {
    const tr = row([name, s.status, s.reason || ""]);
    tr.dataset.channel = name;
    tr.children[1].className = `state-${s.status}`;
    return tr;
  }));
}

function setConnection(state) {
  const badge = $("connection");
  badge.dataset.state = state;
  badge.textContent = state;
  if (state === "disconnected") {
    for (const name of Object.keys(panels)) setStatus(name, "stale", "the gateway cannot be reached");
  }
}

// --- market -----------------------------------------------------------------

function renderBook(envelope) {
  const { bids, asks } = envelope.data;
  $("asks").replaceChildren(...asks.slice(0, LEVELS).reverse().map(([p, q]) => row([p, q])));
  $("bids").replaceChildren(...bids.slice(0, LEVELS).map(([p, q]) => row([p, q])));
  const spread = bids.length && asks.length ? (Number(asks[0][0]) - Number(bids[0][0])).toPrecision(4) : "–";
  $("spread-cell").textContent = `spread ${spread}`;
  $("book-note").textContent = `seq ${envelope.seq}`;
  if (envelope.stale) setStatus(envelope.channel, "stale", "no recent update");
}

function renderDepth(envelope) {
  const points = (levels) => levels.map(([p, q]) => ({ time: Number(p), value: Number(q) }))
    .sort((a, b) => a.time - b.time)
    .filter((point, i, all) => i === 0 || point.time > all[i - 1].time);
  const bids = points(envelope.data.bids);
  const asks = points(envelope.data.asks);
  // Each side carried flat a little past its last level, so that fitting the
  // chart to the data leaves the edge price labels whole.
  if (bids.length && asks.length) {
    const margin = (asks[asks.length - 1].time - bids[0].time) * 0.04;
    bids.unshift({ time: bids[0].time - margin, value: bids[0].value });
    asks.push({ time: asks[asks.length - 1].time + margin, value: asks[asks.length - 1].value });
  }
  bidsDepth.setData(bids);
  asksDepth.setData(asks);
  depthChart.timeScale().fitContent();  // both sides of the book in view
}

function addTrade(data, atTop) {
  const tr = row([time(data.ts), data.price, data.quantity, data.side], data.side);
  const body = $("trades").tBodies[0];
  if (atTop) body.prepend(tr); else body.appendChild(tr);
  while (body.rows.length > TAPE) body.deleteRow(body.rows.length - 1);
}

async function loadHistory(symbol, range) {
  const trades = await getJSON(`/v1/trades/${symbol}?limit=${TAPE}&wait=0`);
  $("trades").tBodies[0].replaceChildren();
  if (trades.status === 200) trades.body.data.forEach((t) => addTrade(t, false));
  const klines = await getJSON(`/v1/klines/${symbol}?range=${range}&limit=500&wait=0`);
  candles.setData(klines.status === 200 ? klines.body.data.map(candle) : []);
  await refreshStatuses();
}

// The channels this page follows, and the others of the gateway that have
// data: a made-up symbol someone else asked for (connecting until the gateway
// gives up on it) is not this page's business.
async function refreshStatuses() {
  try {
    const channels = await getJSON("/v1/channels");
    if (channels.status !== 200) return;
    for (const item of channels.body.channels) {
      if (item.channel in panels || item.seq > 0) setStatus(item.channel, item.status, item.reason);
    }
  } catch (err) {
    setConnection("disconnected");
  }
}

function follow() {
  const symbol = normalize($("symbol").value) || "BTC_USD";
  $("symbol").value = symbol;
  fillSelect($("step"), stepsFor(symbol), $("step").value || (stepsFor(symbol).includes("0.01") ? "0.01" : "0.00000001"));
  fillSelect($("range"), RANGES, $("range").value || "1m");
  const step = $("step").value;
  const range = $("range").value;
  panels = {
    [`orderbook:${symbol}:${step}`]: $("book-panel"),
    [`depth:${symbol}`]: $("depth-panel"),
    [`trades:${symbol}`]: $("trade-panel"),
    [`kline:${symbol}:${range}`]: $("candle-panel"),
  };
  for (const key of Object.keys(statuses)) delete statuses[key];
  for (const name of Object.keys(panels)) setStatus(name, "connecting", null);
  $("asks").replaceChildren();
  $("bids").replaceChildren();
  bidsDepth.setData([]);
  asksDepth.setData([]);
  for (const key of Object.keys(books)) delete books[key];
  lastEventId = "";
  marketHistory = () => loadHistory(symbol, range);
  openMarket([]);
}

let marketHistory = () => {};

// The market stream, in diff mode; ``resync``: channels to be sent whole
// first (their copy could not be proven), resuming from the newest id seen.
function openMarket(resync) {
  if (market) market.close();
  let url = `/v1/stream?channels=${Object.keys(panels).join(",")}&books=diff`;
  if (resync.length) url += `&resync=${resync.join(",")}&last_event_id=${encodeURIComponent(lastEventId)}`;
  market = new EventSource(url);
  const fresh = !resync.length;
  market.onopen = () => { setConnection("live"); if (fresh) marketHistory(); };
  market.onerror = () => setConnection("disconnected");
  const seen = (e) => { if (e.lastEventId) lastEventId = e.lastEventId; };
  for (const name of ["orderbook", "orderbook_diff"]) {
    market.addEventListener(name, (e) => { seen(e); const book = proveBook(name, e); if (book) renderBook(book); });
  }
  for (const name of ["depth", "depth_diff"]) {
    market.addEventListener(name, (e) => { seen(e); const book = proveBook(name, e); if (book) renderDepth(book); });
  }
  market.addEventListener("trade", (e) => { seen(e); addTrade(JSON.parse(e.data).data, true); });
  market.addEventListener("kline", (e) => {
    seen(e);
    try { candles.update(candle(JSON.parse(e.data).data)); } catch (err) { /* an older candle */ }
  });
  market.addEventListener("status", (e) => {
    seen(e);
    const s = JSON.parse(e.data);
    setStatus(s.channel, s.status, s.reason);
  });
  market.addEventListener("reset", () => {
    for (const key of Object.keys(books)) delete books[key];
    marketHistory();
  });
}

// --- account ----------------------------------------------------------------

function renderBalances(envelope) {
  const rows = Object.entries(envelope.data.balances).map(([c, b]) => {
    const tr = row([c, "", ""]);
    decimalCell(tr, 1, b.total);
    decimalCell(tr, 2, b.available);
    return tr;
  });
  $("balances").tBodies[0].replaceChildren(...rows);
}

function addOrder(order) {
  const body = $("orders").tBodies[0];
  const existing = body.querySelector(`tr[data-order="${order.order_no}"]`);
  const tr = row([order.order_no, order.symbol, order.side, order.price, order.remaining_quantity, order.state], order.side);
  tr.dataset.order = order.order_no;
  if (existing) existing.replaceWith(tr); else body.prepend(tr);
  while (body.rows.length > 20) body.deleteRow(body.rows.length - 1);
}

function addFill(fill, atTop) {
  const body = $("fills").tBodies[0];
  const tr = row([fill.deal_no, fill.symbol, fill.side, fill.price, fill.quantity, fill.liquidity], fill.side);
  if (atTop) body.prepend(tr); else body.appendChild(tr);
  while (body.rows.length > 20) body.deleteRow(body.rows.length - 1);
}

async function followAccount() {
  if (account) { account.close(); account = null; }
  const token = $("token").value.trim();
  sessionStorage.setItem("token", token);
  const panel = $("private-panel");
  if (!token) { panel.hidden = true; return; }
  const auth = { Authorization: `Bearer ${token}` };
  const orders = await getJSON("/v1/account/orders?wait=0", auth);
  panel.hidden = false;
  if (orders.status !== 200 && orders.status !== 503) {
    $("private-note").textContent = orders.body ? orders.body.detail : `answer ${orders.status}`;
    return;
  }
  $("private-note").textContent = "";
  if (orders.status === 200) orders.body.data.slice().reverse().forEach(addOrder);
  const fills = await getJSON("/v1/account/fills?limit=20&wait=0", auth);
  if (fills.status === 200) fills.body.data.forEach((f) => addFill(f, false));
  const assets = await getJSON("/v1/account/assets?wait=0", auth);
  if (assets.status === 200) renderBalances(assets.body);
  panels.assets = panel;
  account = new EventSource(`/v1/stream?channels=assets,orders,fills&access_token=${encodeURIComponent(token)}`);
  account.addEventListener("assets", (e) => renderBalances(JSON.parse(e.data)));
  account.addEventListener("order", (e) => addOrder(JSON.parse(e.data).data));
  account.addEventListener("fill", (e) => addFill(JSON.parse(e.data).data, true));
  account.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    setStatus(s.channel, s.status, s.reason);
  });
}

$("symbol").addEventListener("change", () => { $("step").value = ""; follow(); });
$("step").addEventListener("change", follow);
$("range").addEventListener("change", follow);
$("token").addEventListener("change", followAccount);
$("token").value = sessionStorage.getItem("token") || new URLSearchParams(location.hash.slice(1)).get("token") || "";
follow();
followAccount();
setInterval(refreshStatuses, 5000);
