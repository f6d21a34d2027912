// Interop check with the npm package `@2colors/esphome-native-api` (plaintext only):
//   node twocolors.cjs HOST PORT
// Connects, lists entities, waits for state updates, switches the first light and the first switch
// on and off and sees each new state. Prints one line per step; exits 0 only if every step passed.
const { Client } = require("@2colors/esphome-native-api");

const [host, port] = process.argv.slice(2);
const step = (msg) => console.log(`step: ${msg}`);
const fail = (msg) => { console.log(`FAIL: ${msg}`); process.exit(1); };
setTimeout(() => fail("timed out after 60 s"), 60000).unref();

const client = new Client({ host, port: Number(port), reconnect: false, clientInfo: "floe interop (2colors)" });
const entities = [];
let stateCount = 0;
client.on("error", (e) => fail(`client error: ${e && e.message}`));
client.on("deviceInfo", (info) => step(`device info: '${info.name}' mac ${info.macAddress}`));
client.on("newEntity", (entity) => {
  entities.push(entity);
  entity.on("state", () => { stateCount++; });
});

// Resolves with the first state of `entity` for which pred(state) holds.
function nextState(entity, pred, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no state for ${what} within 10 s`)), 10000);
    const onState = (s) => {
      if (!pred(s)) return;
      clearTimeout(timer);
      entity.off("state", onState);
      resolve(s);
    };
    entity.on("state", onState);
  });
}

client.on("initialized", async () => {
  try {
    step(`entities: ${entities.map((e) => `${e.type}:${e.name}`).join(", ")}`);
    const light = entities.find((e) => e.type === "Light");
    const sw = entities.find((e) => e.type === "Switch");
    const sensor = entities.find((e) => e.type === "Sensor");
    if (!light || !sw || !sensor) fail("no light, switch or sensor listed");
    if (!sensor.state) await nextState(sensor, () => true, "the sensor");
    step(`state updates: ${stateCount} so far`);
    for (const [entity, want] of [[light, true], [light, false], [sw, true], [sw, false]]) {
      const seen = nextState(entity, (s) => Boolean(s.state) === want, `${entity.name}=${want}`);
      entity.setState(want);
      const s = await seen;
      step(`${entity.type} '${entity.name}' -> ${Boolean(s.state)}`);
    }
    client.disconnect();
    console.log("OK");
    process.exit(0);
  } catch (e) {
    fail(e.message);
  }
});
client.connect();
