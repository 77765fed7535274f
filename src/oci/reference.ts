import { UsageError } from '../errors.ts';

/** Docker Hub: the registry of names without a host part, and the API host it answers on. */
export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_API = 'registry-1.docker.io';

export interface ImageReference {
  /** host[:port] as written (docker.io for Docker Hub). */
  readonly registry: string;
  readonly repository: string;
  readonly tag: string | undefined;
  readonly digest: string | undefined;
}

const REPO_PART = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
export const DIGEST = /^sha256:[a-f0-9]{64}$/;

/**
 * Parses an image reference as docker does: `[HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]`. A first
 * component without a dot or colon (and not `localhost`) is a Docker Hub path; single-component
 * Hub paths get `library/`. Without tag or digest the tag is `latest`.
 */
export function parseImageReference(text: string): ImageReference {
  const bad = (why: string) =>
    new UsageError(`'${text}' is not an image reference: ${why}`, {
      hint: 'expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. ghcr.io/nvidia/openshell/gateway:latest',
    });
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad(`'${digest}' is not a sha256 digest`);
  }
  let tag: string | undefined;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`'${tag}' is not a valid tag`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    parts.shift();
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  if (!parts.length || parts.some((p) => !REPO_PART.test(p))) {
    throw bad('the name must be lowercase letters, digits and separators (. _ -) between slashes');
  }
  return { registry, repository: parts.join('/'), tag: tag ?? (digest ? undefined : 'latest'), digest };
}

/** The canonical full name, as containerd records it: docker.io/library/alpine:3.20. */
export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

/** Base URL of the registry's API. Loopback registries and the listed insecure ones use plain HTTP. */
export function registryBaseUrl(registry: string, insecure: readonly string[] = []): string {
  const host = registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
  const hostname = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const plain =
    insecure.includes(registry) || hostname === 'localhost' || hostname === '::1' || /^127\./.test(hostname);
  return `${plain ? 'http' : 'https'}://${host}`;
}
