import fs from 'node:fs/promises';

/** True when `file` exists (any type, following symlinks). */
export async function pathExists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}
