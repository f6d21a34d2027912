// Interop check with the npm package `esphome-client` (supports Noise encryption):
//   node esphome_client.mjs HOST PORT [BASE64_PSK]
// Connects, lists entities, waits for state updates, switches the first light and the first switch
// on and off and sees each new state. Prints one line per step; exits 0 only if every step passed.
// Node 20 lacks a few Node 22 features the package uses; they are filled in first.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    return { promise, resolve, reject };
  };
}
if (!Promise.try) {
  Promise.try = function (fn, ...args) {
    return new Promise((resolve) => resolve(fn(...args)));
  };
}
if (!Map.groupBy) {
  Map.groupBy = function (items, keyOf) {
    const m = new Map();
    let i = 0;
    for (const item of items) {
      const k = keyOf(item, i++);
      if (!m.has(k)) m.set(k, []);
      m.get(k).push(item);
    }
    return m;
  };
}
Symbol.dispose ??= Symbol("Symbol.dispose");
Symbol.asyncDispose ??= Symbol("Symbol.asyncDispose");

const { EspHomeClient } = await import("esphome-client");

const [host, port, psk] = process.argv.slice(2);
const step = (msg) => console.log(`step: ${msg}`);
const fail = (msg) => { console.log(`FAIL: ${msg}`); process.exit(1); };
setTimeout(() => fail("timed out after 60 s"), 60000).unref();

const client = new EspHomeClient({ host, port: Number(port), psk: psk ?? null, reconnect: false, keepAlive: false });
const states = [];
client.on("telemetry", (e) => states.push(e));
try {
  await client.connect();
} catch (e) {
  fail(`connect: ${e?.name}: ${e?.message}`);
}
const info = client.deviceInfo();
step(`connected to '${info?.name}' (mac ${info?.macAddress}, encrypted ${client.health().encrypted})`);
const ids = client.getAvailableEntityIds();
step(`entities: ${JSON.stringify(ids)}`);
const light = (ids.light ?? [])[0];
const sw = (ids.switch ?? [])[0];
if (!light || !sw) fail("no light or no switch listed");
if (!(ids.sensor ?? []).length) fail("no sensor listed");

// State updates: every entity's state after subscribing, then changes.
const deadline = Date.now() + 20000;
while (!states.some((e) => e.type === "sensor") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
if (!states.some((e) => e.type === "sensor")) fail("no sensor state arrived");
step(`state updates: ${states.length} so far`);

for (const [id, want] of [[light, true], [light, false], [sw, true], [sw, false]]) {
  let ev;
  try {
    ev = await client.commandAndAwait(id, { state: want }, { timeoutMs: 10000, predicate: (e) => Boolean(e.state) === want });
  } catch (e) {
    fail(`command ${id} state=${want}: ${e?.name}: ${e?.message}`);
  }
  step(`${id} -> ${Boolean(ev.state)}`);
}
await client.disconnectAsync();
console.log("OK");
process.exit(0);
