/**
 * The access and refresh tokens as the client (client.ts) keeps them: when an access
 * token expires by this device's clock, which failures of a refresh end the session,
 * and how a failed write of new tokens is tried again.
 */
import { ApiError } from './api.ts';

/** A claim of a JWT (a number; 0 when absent or unreadable). The signature is the
 * server's business: the client only reads when a token ends. */
export function jwtClaim(token: string, name: string): number {
  try {
    const part = (token.split('.')[1] as string).replace(/-/g, '+').replace(/_/g, '/');
    const value = Number((JSON.parse(atob(part)) as Record<string, unknown>)[name]);
    return Number.isFinite(value) ? value : 0;
  } catch {
    return 0;
  }
}

/**
 * When `token` expires by this device's clock (ms), as judged when it arrived at
 * `arrivedAt` (this clock): its lifetime as the server stamped it (`exp` - `iat`), or
 * the answer's `expires_in`, counted from then. Its `exp` against this clock only when
 * it says neither. A clock an hour ahead otherwise takes every token for expired (a
 * refresh, a refresh-token rotation and a vault write at every call, until the auth
 * service's limiter answers 429); one behind takes expired tokens for good.
 */
export function expiresAt(token: string, arrivedAt: number, expiresIn?: number): number {
  const exp = jwtClaim(token, 'exp');
  const iat = jwtClaim(token, 'iat');
  if (exp && iat && exp > iat) return arrivedAt + (exp - iat) * 1000;
  if (typeof expiresIn === 'number' && expiresIn > 0) return arrivedAt + expiresIn * 1000;
  return exp * 1000;
}

/**
 * An answer of the auth service that ends the session here, as opposed to a failure
 * that may pass (no answer, a 429 or a 5xx: `ApiError.transient`; the client tries the
 * socket again after its backoff): a 4xx (`token_revoked`, `refresh_token_reused`,
 * `invalid_token`, a blocked account, a removed device...).
 */
export function refused(error: unknown): error is ApiError {
  return error instanceof ApiError && !error.transient;
}

/** The refusals of a refresh that mean the refresh token is dead: it is forgotten. */
export const DEAD_TOKEN = new Set(['token_revoked', 'refresh_token_reused', 'invalid_token']);

/** A failed write of new tokens (the storage full) is tried again after `first` ms,
 * doubling up to `max`, until one succeeds: the refresh token the vault holds was used
 * up by that refresh (presented again at the next page load, the auth service takes it
 * for a stolen one and ends the session). Tests shorten it. */
export const TOKEN_SAVE_RETRY = { first: 1_000, max: 60_000 };
