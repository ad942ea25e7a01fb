// Where the web client finds the APIs: its own origin (HAProxy), or the one /config.json
// names (AWS: the client on CloudFront, the APIs on the load balancer).
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Api, apiUrl, loadApiOrigin, setApiOrigin, socketUrl } from '../src/app/api.ts';

const page = { protocol: 'https:', host: 'app.example.com' };

function serve(status: number, body: unknown): void {
  vi.stubGlobal('fetch', vi.fn(async (url: string) => {
    if (url === '/config.json') return new Response(JSON.stringify(body), { status });
    return new Response(JSON.stringify({ url }), { status: 200, headers: { 'Content-Type': 'application/json' } });
  }));
}

afterEach(() => {
  setApiOrigin('');
  vi.unstubAllGlobals();
});

describe('the API origin', () => {
  it('is the page own without a config file', async () => {
    serve(404, {});
    await loadApiOrigin();
    expect(apiUrl('/auth/v1/me')).toBe('/auth/v1/me');
    expect(socketUrl(page)).toBe('wss://app.example.com/ws');
    expect(socketUrl({ protocol: 'http:', host: 'localhost:8080' })).toBe('ws://localhost:8080/ws');
  });

  it('is the one config.json names, for every call and the WebSocket', async () => {
    serve(200, { api_url: 'https://api.example.com/' });
    await loadApiOrigin();
    expect(socketUrl(page)).toBe('wss://api.example.com/ws');
    const answer = await new Api().request<{ url: string }>('GET', '/rooms/v1/rooms', undefined, false);
    expect(answer.url).toBe('https://api.example.com/rooms/v1/rooms');
  });

  it('ignores a config that names no origin', async () => {
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    serve(200, { api_url: 'https://api.example.com/path?x' });
    await loadApiOrigin();
    expect(apiUrl('/ws')).toBe('/ws');
    expect(warn).toHaveBeenCalledOnce();
  });
});

describe('a config file that cannot be read', () => {
  it('is tried again, then fails rather than call the page own origin', async () => {
    let calls = 0;
    vi.stubGlobal('fetch', vi.fn(async () => {
      calls += 1;
      return new Response('busy', { status: 503 });
    }));
    await expect(loadApiOrigin(3, 1)).rejects.toThrow('Cannot read /config.json (HTTP 503)');
    expect(calls).toBe(3);
    expect(apiUrl('/auth/v1/me')).toBe('/auth/v1/me'); // nothing was set
  });

  it('succeeds once it answers', async () => {
    let calls = 0;
    vi.stubGlobal('fetch', vi.fn(async () => {
      calls += 1;
      if (calls === 1) throw new TypeError('network');
      return new Response(JSON.stringify({ api_url: 'https://api.example.com' }), { status: 200 });
    }));
    await loadApiOrigin(3, 1);
    expect(calls).toBe(2);
    expect(socketUrl(page)).toBe('wss://api.example.com/ws');
  });
});
