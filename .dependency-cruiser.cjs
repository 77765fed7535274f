// The layering rule (`npm run check`): a module may import its own layer and the layers below
// it, never one above. From the top: cli → pool → api → options → presets → gateway/rootfs/exec →
// instance → vmm/net/guest/agent → oci/archive/kernel/accel → supervisor/host/config (+ src/*.ts).
const LAYERS = [
  ['cli'],
  ['pool'],
  ['api', 'index'],
  ['options'],
  ['presets'],
  ['gateway', 'rootfs', 'exec'],
  ['instance'],
  ['vmm', 'net', 'guest', 'agent'],
  ['oci', 'archive', 'kernel', 'accel'],
  ['supervisor', 'host', 'config', 'errors', 'version'],
];
const dirs = (layers) =>
  layers.flat().map((d) => (d === 'index' || d === 'errors' || d === 'version' ? `${d}\\.ts$` : `${d}/`));
const forbidden = LAYERS.slice(1).map((layer, i) => ({
  name: `layer-${layer.join('-')}`,
  comment: `src/{${layer.join(',')}} is below src/{${LAYERS.slice(0, i + 1)
    .flat()
    .join(',')}}: it may not import them`,
  severity: 'error',
  from: { path: `^src/(${dirs([layer]).join('|')})` },
  to: { path: `^src/(${dirs(LAYERS.slice(0, i + 1)).join('|')})` },
}));
const known = dirs(LAYERS).join('|');
forbidden.push({
  name: 'layer-unknown',
  comment: `a module outside the known layers: add its directory to LAYERS in .dependency-cruiser.cjs`,
  severity: 'error',
  from: { path: '^src/', pathNot: `^src/(${known})` },
  to: {},
});
forbidden.push({
  name: 'no-circular',
  comment: 'import cycles make load order fragile',
  severity: 'error',
  from: { path: '^src/' },
  to: { circular: true },
});
module.exports = {
  forbidden,
  options: {
    // swc parses the TypeScript sources as they are (type-only imports count too); TypeScript 7,
    // the project's compiler, has no JavaScript API for dependency-cruiser's own tsc parser yet.
    parser: 'swc',
    tsPreCompilationDeps: false,
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '\\.test\\.ts$' },
  },
};
