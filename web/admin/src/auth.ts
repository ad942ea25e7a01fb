// Sign-in through Parley's OpenID provider: authorization code + PKCE (oidc-client-ts).
import { User, UserManager, WebStorageStateStore } from "oidc-client-ts";
import { setApiOrigin } from "./api";

export interface Config {
  authority: string;
  client_id: string;
  /** The APIs' origin when it is not the console's (deploy.yml writes it on AWS). */
  api_url?: string;
}

export const BASE = "/admin/";

export async function loadConfig(): Promise<Config> {
  const resp = await fetch(`${BASE}config.json`, { cache: "no-cache" });
  if (!resp.ok) throw new Error(`config.json: HTTP ${resp.status}`);
  const config = (await resp.json()) as Config;
  setApiOrigin(config.api_url);
  return config;
}

export function userManager(config: Config): UserManager {
  const origin = window.location.origin;
  return new UserManager({
    authority: config.authority,
    client_id: config.client_id,
    redirect_uri: `${origin}${BASE}callback`,
    post_logout_redirect_uri: `${origin}${BASE}`,
    response_type: "code",
    // roles: the admin check below; parley.api: the access token calls the admin API.
    scope: "openid profile email roles parley.api",
    // Tokens live in this tab only, never in localStorage.
    userStore: new WebStorageStateStore({ store: window.sessionStorage }),
    automaticSilentRenew: true,
    loadUserInfo: false,
  });
}

/** Admin rights come from the `admin` role in the ID token (the API checks its token anyway). */
export function isAdmin(user: User | null): boolean {
  const roles = user?.profile?.["roles"];
  return Array.isArray(roles) && roles.includes("admin");
}
