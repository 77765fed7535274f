import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import YAML from 'yaml';
import { HostError, UsageError } from '../errors.ts';
import { AGENT_SANDBOX_IMAGE } from './agent-sandbox.ts';
import { packageChartDir } from './chart.ts';
import {
  AGENT_SANDBOX_IMAGE_DIGEST,
  type GatewayImage,
  imagesUnavailableError,
  resolveDefaultImages,
  resolveGatewayImages,
} from './default-images.ts';

// The fixture follows OpenShell's chart (image.tag "", supervisor.image.tag "", server.sandboxImage
// base:latest; appVersion "test" in its Chart.yaml, where the real chart has its release).
const FIXTURE = new URL('../../test/fixtures/chart/openshell/', import.meta.url).pathname;
const fixtureValues = YAML.parse(fs.readFileSync(`${FIXTURE}values.yaml`, 'utf8'));

/** The fixture chart with `edit` applied to its values (and another appVersion, if given). */
function chart(
  edit: (values: typeof fixtureValues) => void = () => undefined,
  appVersion: string | null = 'test',
) {
  const values = structuredClone(fixtureValues);
  edit(values);
  return {
    name: 'openshell',
    version: '0.1.0',
    appVersion: appVersion ?? undefined,
    valuesYaml: YAML.stringify(values),
    source: 'fixture',
  };
}
const brief = (images: readonly GatewayImage[]) => images.map((i) => `${i.role} ${i.reference} ${i.source}`);

test('the fixture chart packaged from its directory carries its appVersion', async () => {
  const packaged = await packageChartDir(FIXTURE);
  assert.equal(packaged.appVersion, 'test');
  const { values, images } = resolveGatewayImages(packaged, {}, { agentSandbox: true });
  assert.deepEqual(values.image, { repository: 'ghcr.io/nvidia/openshell/gateway', tag: 'test' });
  assert.equal(images.length, 4);
});

test("by default the chart's images: the tag defaults to the appVersion, the supervisor follows it", () => {
  const { values, images } = resolveGatewayImages(chart(undefined, '0.0.116'), {}, { agentSandbox: true });
  assert.deepEqual(values, {
    image: { repository: 'ghcr.io/nvidia/openshell/gateway', tag: '0.0.116' },
    supervisorImage: { repository: 'ghcr.io/nvidia/openshell/supervisor', tag: '0.0.116' },
    sandboxImage: 'ghcr.io/nvidia/openshell-community/sandboxes/base:latest',
  });
  assert.deepEqual(brief(images), [
    'gateway ghcr.io/nvidia/openshell/gateway:0.0.116 default',
    'supervisor ghcr.io/nvidia/openshell/supervisor:0.0.116 default',
    'sandbox ghcr.io/nvidia/openshell-community/sandboxes/base:latest default',
    `agent-sandbox ${AGENT_SANDBOX_IMAGE} default`,
  ]);
  assert.match(images[0]?.from ?? '', /tagged with its appVersion$/);
  // Only the controller is pinned (OpenShell's pin); the chart's images go by tag.
  assert.deepEqual(
    images.map((i) => i.pinned),
    [undefined, undefined, undefined, AGENT_SANDBOX_IMAGE_DIGEST],
  );
});

test("the chart's own tags win over its appVersion, as its templates have it", () => {
  const { values, images } = resolveGatewayImages(
    chart((v) => {
      v.image.tag = '1.2.3';
      v.supervisor.image.tag = 'sup-9';
      v.supervisor.image.repository = '';
    }),
    {},
    { agentSandbox: false },
  );
  assert.deepEqual(values.image.tag, '1.2.3');
  // An empty supervisor repository is the chart's built-in one.
  assert.deepEqual(values.supervisorImage, {
    repository: 'ghcr.io/nvidia/openshell/supervisor',
    tag: 'sup-9',
  });
  assert.deepEqual(brief(images).slice(0, 2), [
    'gateway ghcr.io/nvidia/openshell/gateway:1.2.3 default',
    'supervisor ghcr.io/nvidia/openshell/supervisor:sup-9 default',
  ]);
});

test('--gateway-image and --sandbox-image replace the chart’s; the supervisor takes the given tag', () => {
  const { values, images } = resolveGatewayImages(
    chart(),
    { image: { repository: 'registry.test:5000/own/gateway', tag: 'v9' }, sandboxImage: 'own/sandbox:2' },
    { agentSandbox: true },
  );
  assert.deepEqual(values, {
    image: { repository: 'registry.test:5000/own/gateway', tag: 'v9' },
    supervisorImage: { repository: 'ghcr.io/nvidia/openshell/supervisor', tag: 'v9' },
    sandboxImage: 'own/sandbox:2',
  });
  assert.deepEqual(brief(images), [
    'gateway registry.test:5000/own/gateway:v9 given',
    'supervisor ghcr.io/nvidia/openshell/supervisor:v9 given',
    // Docker Hub names are canonical, as containerd records them.
    'sandbox docker.io/own/sandbox:2 given',
    `agent-sandbox ${AGENT_SANDBOX_IMAGE} default`,
  ]);
  // A chart that sets its supervisor's tag keeps it with another gateway.
  const pinned = resolveGatewayImages(
    chart((v) => {
      v.supervisor.image.tag = 'sup-1';
    }),
    { image: { repository: 'own/gateway', tag: 'v9' } },
    { agentSandbox: true },
  );
  assert.deepEqual(brief(pinned.images)[1], 'supervisor ghcr.io/nvidia/openshell/supervisor:sup-1 default');
});

test('agent-sandbox off: its controller image is not among them', () => {
  const { images } = resolveGatewayImages(chart(), {}, { agentSandbox: false });
  assert.deepEqual(
    images.map((i) => i.role),
    ['gateway', 'supervisor', 'sandbox'],
  );
});

test('a sandbox image named by digest is pinned to it', () => {
  const digest = `sha256:${'a'.repeat(64)}`;
  const { images } = resolveGatewayImages(
    chart((v) => {
      v.server.sandboxImage = `ghcr.io/x/base@${digest}`;
    }),
    {},
    { agentSandbox: false },
  );
  assert.deepEqual([images[2]?.reference, images[2]?.pinned], [`ghcr.io/x/base@${digest}`, digest]);
});

test('a chart that names no gateway or sandbox image, or a bad one, is refused with the flag that fixes it', () => {
  const noTag = () => resolveGatewayImages(chart(undefined, null), {}, { agentSandbox: true });
  assert.throws(noTag, (err: unknown) => {
    assert.ok(err instanceof UsageError);
    assert.match(
      err.message,
      /names no gateway image: image\.tag is empty and Chart\.yaml has no appVersion/,
    );
    assert.match(err.hint ?? '', /--gateway-image REPOSITORY:TAG/);
    return true;
  });
  // Given, it is not needed.
  const given = resolveGatewayImages(
    chart(undefined, null),
    { image: { repository: 'own/gw', tag: '1' } },
    { agentSandbox: false },
  );
  assert.equal(given.images[1]?.reference, 'ghcr.io/nvidia/openshell/supervisor:1');
  assert.throws(
    () =>
      resolveGatewayImages(
        chart((v) => {
          v.server.sandboxImage = '';
        }),
        {},
        { agentSandbox: true },
      ),
    /names no sandbox image: server\.sandboxImage is empty/,
  );
  assert.throws(
    () =>
      resolveGatewayImages(
        chart((v) => {
          v.image.repository = 'Upper/Case';
        }),
        {},
        { agentSandbox: true },
      ),
    (err: unknown) =>
      err instanceof UsageError &&
      /^the chart's image\.repository.*is not an image reference/.test(err.message),
  );
  assert.throws(
    () =>
      resolveGatewayImages(
        chart((v) => {
          v.image.tag = ['x'];
        }),
        {},
        { agentSandbox: true },
      ),
    /image\.tag in its values\.yaml is not a string/,
  );
});

test('defaultImages: true unless false; anything else is refused', () => {
  assert.equal(resolveDefaultImages({}), true);
  assert.equal(resolveDefaultImages({ defaultImages: true }), true);
  assert.equal(resolveDefaultImages({ defaultImages: false }), false);
  assert.throws(
    () => resolveDefaultImages({ defaultImages: 'no' }),
    (err: unknown) => err instanceof UsageError && /--no-images/.test(err.hint ?? ''),
  );
});

test('the offline error names each image, what it is for and why, and the fixes (--image FILE, --no-images)', () => {
  const { images } = resolveGatewayImages(chart(undefined, '0.0.116'), {}, { agentSandbox: true });
  const offline = new HostError('cannot reach ghcr.io: ENOTFOUND');
  const err = imagesUnavailableError([
    ...images.slice(0, 3).map((image) => ({ image, error: offline })),
    { image: images[3] as GatewayImage, error: new HostError('cannot reach registry.k8s.io: EAI_AGAIN') },
  ]);
  assert.ok(err instanceof HostError);
  const lines = err.message.split('\n');
  assert.equal(lines[0], '4 images the gateway runs could not be pulled to pre-load them:');
  assert.deepEqual(lines.slice(1), [
    "  gateway image ghcr.io/nvidia/openshell/gateway:0.0.116 (the chart's image.repository, tagged with its appVersion): cannot reach ghcr.io: ENOTFOUND",
    "  supervisor image ghcr.io/nvidia/openshell/supervisor:0.0.116 (the chart's supervisor.image.repository and the gateway's tag): cannot reach ghcr.io: ENOTFOUND",
    "  sandbox image ghcr.io/nvidia/openshell-community/sandboxes/base:latest (the chart's server.sandboxImage): cannot reach ghcr.io: ENOTFOUND",
    `  agent-sandbox image ${AGENT_SANDBOX_IMAGE} (the agent-sandbox controller's manifest): cannot reach registry.k8s.io: EAI_AGAIN`,
  ]);
  assert.match(err.hint ?? '', /--image FILE\.tar/);
  assert.match(err.hint ?? '', /docker save REF -o FILE\.tar/);
  assert.match(err.hint ?? '', /--no-images/);
  assert.equal(err.cause, offline);
  // A registry's answer is not ours: no escape sequence reaches the terminal.
  const hostile = imagesUnavailableError([
    { image: images[0] as GatewayImage, error: new HostError('HTTP 500 \x1b]52;c;aGk=\x07 boom') },
  ]);
  assert.match(hostile.message, /^an image the gateway runs could not be pulled to pre-load it:\n/);
  assert.equal(hostile.message.includes('\x1b'), false);
  assert.equal(hostile.message.includes('\x07'), false);
});
