// Stands in for the `bindings` package inside the single executable: better-sqlite3 calls
// require('bindings')('better_sqlite3.node'), which here loads the embedded, extracted addon.
const { loadNativeAddon } = require('../../agent/native-addons.ts');

module.exports = function bindings(options) {
  return loadNativeAddon(typeof options === 'string' ? options : options.bindings);
};
