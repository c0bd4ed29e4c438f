// Byte sources the worker hands to the wasm lab: synchronous `read(offset, length)` calls,
// which a worker may make (FileReaderSync, synchronous XMLHttpRequest). The Rust readers stay
// synchronous and ask only for the ranges they need, so a model never sits whole in memory.

export interface JsSource {
  name: string;
  size: number;
  read(offset: number, length: number): Uint8Array;
}

/** A File the user dropped or picked, read slice by slice. */
export function fileSource(file: File): JsSource {
  const reader = new FileReaderSync();
  return {
    name: file.name,
    size: file.size,
    read(offset, length) {
      return new Uint8Array(reader.readAsArrayBuffer(file.slice(offset, offset + length)));
    },
  };
}

/** Bytes already in memory (a URL whose server ignores range requests). */
export function memorySource(name: string, bytes: Uint8Array): JsSource {
  return { name, size: bytes.length, read: (offset, length) => bytes.subarray(offset, offset + length) };
}

function nameOf(url: string): string {
  try {
    const path = new URL(url, self.location.href).pathname;
    return decodeURIComponent(path.slice(path.lastIndexOf('/') + 1)) || url;
  } catch {
    return url;
  }
}

/**
 * A URL read with HTTP range requests. The first request asks for one byte to learn the size
 * and whether ranges work; without range support the file is downloaded once, with progress.
 */
export async function urlSource(url: string, onProgress: (done: number, total: number) => void): Promise<JsSource> {
  const name = nameOf(url);
  let probe: Response;
  try {
    probe = await fetch(url, { headers: { Range: 'bytes=0-0' } });
  } catch (e) {
    throw new Error(`cannot fetch ${url}: ${(e as Error).message} (is the address right, and does the server allow CORS?)`);
  }
  if (probe.status === 206) {
    const total = /\/(\d+)$/.exec(probe.headers.get('content-range') ?? '')?.[1];
    await probe.arrayBuffer();
    if (total === undefined) throw new Error(`${url}: the server did not say how big the file is`);
    const size = Number(total);
    return {
      name,
      size,
      read(offset, length) {
        const xhr = new XMLHttpRequest();
        xhr.open('GET', url, false);
        xhr.responseType = 'arraybuffer';
        xhr.setRequestHeader('Range', `bytes=${offset}-${offset + length - 1}`);
        xhr.send();
        if (xhr.status !== 206) throw new Error(`HTTP ${xhr.status} for bytes ${offset}..${offset + length}`);
        return new Uint8Array(xhr.response as ArrayBuffer);
      },
    };
  }
  if (!probe.ok) throw new Error(`cannot fetch ${url}: HTTP ${probe.status} ${probe.statusText}`);
  // No range support: one full download, with progress.
  const total = Number(probe.headers.get('content-length') ?? 0);
  const reader = probe.body?.getReader();
  if (!reader) throw new Error(`${url}: the response has no body`);
  const parts: Uint8Array[] = [];
  let done = 0;
  for (;;) {
    const { value, done: finished } = await reader.read();
    if (finished) break;
    parts.push(value);
    done += value.length;
    onProgress(done, total);
  }
  const bytes = new Uint8Array(done);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return memorySource(name, bytes);
}
