// Stands in, inside the single executable, for mqtt.js's transports the agent never uses: its
// WebSocket stream builders (lib/connect/ws.js, which loads `ws`) and its SOCKS proxy client
// (lib/connect/socks.js, which loads `socks`, `ip-address` and `smart-buffer`). The agent's
// configuration and its enrollment accept mqtt:// and mqtts:// broker URLs only
// (agent/config.ts, agent/enrollment/identity.ts), so the only way here is mqtt.js's own
// MQTTJS_SOCKS_PROXY variable: refused with a stable code rather than loading those modules
// at every start for it.
const { DriftlineError } = require('../../common/errors.ts');

function unsupported(what) {
  return () => {
    throw new DriftlineError('CONFIG_INVALID', `driftline-agent connects to its broker over mqtt:// or mqtts:// only; ${what} is not supported`);
  };
}

exports.__esModule = true;
// lib/connect/socks.js: tcp.js and tls.js call it when a SOCKS proxy is set.
exports.default = unsupported('a SOCKS proxy (MQTTJS_SOCKS_PROXY)');
// lib/connect/ws.js: connect() registers these for ws:// and wss://.
exports.streamBuilder = unsupported('MQTT over WebSocket');
exports.browserStreamBuilder = exports.streamBuilder;
