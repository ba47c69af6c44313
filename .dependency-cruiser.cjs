/**
 * The architecture, as rules the tests enforce (test/architecture.layers.test.ts and
 * `npm run lint:layers`): no import cycles; the agent and the control plane share code only
 * through common/; core logic stays free of transports, runtimes and databases so adapters
 * can be swapped and tests can drive the core directly.
 */
const ADAPTER_PACKAGES = '(^|/)node_modules/(mqtt|@grpc/|onnxruntime-node|better-sqlite3|aedes|azure-iot-device)/';
const CORE = [
  '^common/(?!proto/)',
  '^agent/telemetry/',
  '^agent/models/model-manager\\.ts$',
  '^agent/inference/(engine|model-runtime|datatypes)\\.ts$',
  // The buffer's port, its pure retention policy and the drop-report debounce; the SQLite files are the adapters.
  '^agent/buffer/(?!sqlite-)',
  // The parts the agent's composition root wires, and the drift monitor: pure, tested without a process.
  '^agent/(commands|downlink|reported-state|health|paths)\\.ts$',
  '^agent/drift/',
  // The learner's logic, guards and ports are core; its adapters have folders of their own (sqlite/, onnxruntime/, http/).
  '^agent/learner/(?!(sqlite|onnxruntime|http)/)',
  // The inference protocol's mapping is pure; routes and server.ts put it on HTTP.
  '^agent/local-api/inference-protocol\\.ts$',
  // The uplink's port, its factory and the backoff are core; each adapter has a folder of its own (agent/uplink/mqtt/).
  '^agent/uplink/[^/]+\\.ts$',
  // The domain folders are core as a whole: a new file there is core without being listed here.
  // Their storage adapters live in control-plane/store/<database>/ (store/sqlite/ today, store/postgres/ later).
  '^control-plane/(fleet|registry|drift|rollout|telemetry|datasets)/',
  // Training jobs, leases and the evaluation gate are core; training/onnxruntime/ is the evaluator's adapter.
  '^control-plane/training/(?!onnxruntime/)',
  // The device link's port, the topic ACL and the factory are core; each adapter has a folder of its own
  // (device-link/embedded-mqtt/, device-link/external-mqtt/, device-link/mqtt-session/ which both share).
  '^control-plane/device-link/[^/]+\\.ts$',
  '^control-plane/api/ports\\.ts$',
  // The GPU worker (its loop, port, files, trainer runner and output checks) is core; its adapters have folders of
  // their own: worker/onnxruntime/ (the candidate load check) and worker/grpc/ (WorkerService over client/).
  '^worker/[^/]+\\.ts$',
];

module.exports = {
  forbidden: [
    { name: 'no-circular', severity: 'error', from: {}, to: { circular: true } },
    {
      name: 'core-without-adapters',
      comment: 'Core logic depends on small interfaces; only adapters import transports, runtimes and databases.',
      severity: 'error',
      from: { path: CORE },
      to: { path: ADAPTER_PACKAGES, dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'sqlite-only-in-its-store',
      comment:
        "The control plane (and the CLI and client beside it) reaches SQLite only through the repositories in store/sqlite/ (behind each domain's ports); not even its types elsewhere.",
      severity: 'error',
      from: { path: '^(control-plane|cli|client)/', pathNot: '^control-plane/store/sqlite/' },
      to: { path: '(^|/)node_modules/better-sqlite3/' },
    },
    { name: 'agent-not-control-plane', severity: 'error', from: { path: '^agent/' }, to: { path: '^control-plane/' } },
    { name: 'control-plane-not-agent', severity: 'error', from: { path: '^control-plane/' }, to: { path: '^agent/' } },
    {
      name: 'common-is-a-leaf',
      severity: 'error',
      from: { path: '^common/' },
      to: { path: '^(agent|control-plane|simulator|demo|cli|client|worker|trainers|bench)/' },
    },
    {
      name: 'worker-talks-over-the-api',
      comment:
        'The GPU worker reaches the control plane over gRPC (through client/) and runs trainers as processes; it imports no agent or control-plane code.',
      severity: 'error',
      from: { path: '^worker/' },
      to: { path: '^(agent|control-plane|cli|simulator|demo|trainers)/' },
    },
    {
      name: 'trainers-are-programs',
      comment: 'A built-in trainer is a program obeying the trainer contract, on common/ alone: users replace it with their own command.',
      severity: 'error',
      from: { path: '^trainers/' },
      to: { path: '^(agent|control-plane|cli|client|simulator|demo|worker)/' },
    },
    {
      name: 'control-plane-not-its-clients',
      comment: 'The operator CLI and the client library call the control plane over gRPC; the control plane never imports them.',
      severity: 'error',
      from: { path: '^control-plane/' },
      to: { path: '^(cli|client)/' },
    },
    {
      name: 'client-is-a-library',
      comment: 'client/ is the typed operator gRPC client: common/ and the generated wire types, nothing of the CLI, the control plane or the agent.',
      severity: 'error',
      from: { path: '^client/' },
      to: { path: '^(agent|control-plane|cli|simulator|demo)/' },
    },
    {
      name: 'cli-talks-over-the-client',
      comment:
        'The CLI reaches the control plane through client/; of control-plane/ it loads only the entry point and its configuration schema, for `driftline serve`.',
      severity: 'error',
      from: { path: '^cli/' },
      to: { path: ['^agent/', '^simulator/', '^demo/', '^control-plane/(?!(main|config)\\.ts$)'] },
    },
    {
      name: 'simulator-is-a-device-double',
      comment: 'The fleet simulator speaks the device protocol from common/ (and the operator API through its client), never agent or control-plane code.',
      severity: 'error',
      from: { path: '^simulator/' },
      to: { path: '^(agent|control-plane|demo|cli)/' },
    },
    { name: 'nothing-runs-on-the-simulator', severity: 'error', from: { path: '^(agent|control-plane|common|cli|client)/' }, to: { path: '^simulator/' } },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'], extensions: ['.ts', '.js', '.json'] },
    moduleSystems: ['es6', 'cjs'],
  },
};
