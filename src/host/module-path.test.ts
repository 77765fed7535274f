import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { siblingModulePath } from './module-path.ts';

describe('siblingModulePath', () => {
  it('keeps the calling module’s extension: .ts in a checkout, .js in the build', () => {
    assert.equal(
      siblingModulePath('file:///pkg/src/vmm/libkrun/backend.ts', 'runner'),
      '/pkg/src/vmm/libkrun/runner.ts',
    );
    assert.equal(
      siblingModulePath('file:///pkg/dist/vmm/libkrun/backend.js', 'runner'),
      '/pkg/dist/vmm/libkrun/runner.js',
    );
  });

  it('gives a file path, not a URL path (spaces and percent signs decoded)', () => {
    const url = pathToFileURL('/a dir/50%/backend.js');
    assert.equal(siblingModulePath(url, 'runner'), '/a dir/50%/runner.js');
    assert.equal(siblingModulePath(url.href, 'runner'), '/a dir/50%/runner.js');
  });

  it('names this very module’s sibling when given import.meta.url', () => {
    assert.equal(siblingModulePath(import.meta.url, 'module-path.test'), import.meta.filename);
  });
});
