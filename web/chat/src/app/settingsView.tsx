/** "Account settings" in the main area: three tabs, Devices (devicesView.tsx), Sessions
 * (sessionsView.tsx) and Two-step verification (twoFactorView.tsx). The top bar's
 * "Devices" opens the first, the sidebar's Settings the others. A tab list as the ARIA
 * pattern has it: arrows, Home and End move between the tabs (and show each), Tab goes
 * on into the panel. */
import { useEffect, useRef } from 'preact/hooks';
import type { ParleyClient } from './client.ts';
import { DevicesView } from './devicesView.tsx';
import { SessionsView } from './sessionsView.tsx';
import { TwoFactorView } from './twoFactorView.tsx';

export type SettingsTab = 'devices' | 'sessions' | 'security';

const TABS: { id: SettingsTab; label: string }[] = [
  { id: 'devices', label: 'Devices' },
  { id: 'sessions', label: 'Sessions' },
  { id: 'security', label: 'Two-step verification' },
];

/** `onSignedOut`: this browser is signed out (its own session ended, or it removed
 * itself from the account); what the log-in page is to say. */
export function SettingsPanel(props: { client: ParleyClient; tab: SettingsTab; onTab: (tab: SettingsTab) => void; onSignedOut: (notice: string) => void }) {
  const { client, tab, onTab, onSignedOut } = props;
  const titleRef = useRef<HTMLHeadingElement>(null);
  const tabRefs = useRef<Record<string, HTMLButtonElement | null>>({});
  useEffect(() => titleRef.current?.focus(), []);
  const move = (e: KeyboardEvent) => {
    const at = TABS.findIndex((t) => t.id === tab);
    const to = e.key === 'ArrowRight' ? at + 1 : e.key === 'ArrowLeft' ? at - 1 : e.key === 'Home' ? 0 : e.key === 'End' ? TABS.length - 1 : null;
    if (to === null) return;
    e.preventDefault();
    const next = TABS[(to + TABS.length) % TABS.length] as (typeof TABS)[number];
    onTab(next.id);
    tabRefs.current[next.id]?.focus();
  };
  return (
    <section class="conversation account-settings" aria-labelledby="settings-heading">
      <header class="conv-head">
        <h2 id="settings-heading" tabIndex={-1} ref={titleRef}>
          Account settings
        </h2>
      </header>
      <div class="tabs" role="tablist" aria-label="Account settings" onKeyDown={move}>
        {TABS.map((t) => (
          <button
            type="button"
            role="tab"
            id={`settings-tab-${t.id}`}
            key={t.id}
            ref={(el) => {
              tabRefs.current[t.id] = el;
            }}
            aria-selected={tab === t.id}
            aria-controls="settings-tabpanel"
            tabIndex={tab === t.id ? 0 : -1}
            onClick={() => onTab(t.id)}
          >
            {t.label}
          </button>
        ))}
      </div>
      <div class="tab-panel" role="tabpanel" id="settings-tabpanel" aria-labelledby={`settings-tab-${tab}`}>
        {tab === 'devices' ? (
          <DevicesView client={client} onSignedOut={onSignedOut} />
        ) : tab === 'sessions' ? (
          <SessionsView client={client} onSignedOut={onSignedOut} />
        ) : (
          <TwoFactorView client={client} />
        )}
      </div>
    </section>
  );
}

/** The sidebar's way into the account's settings (under "Settings"). */
export function AccountSettingsLinks(props: { current: SettingsTab | null; onOpen: (tab: SettingsTab) => void }) {
  return (
    <div class="account-links">
      <h3 id="account-links-title">Account and security</h3>
      <ul aria-labelledby="account-links-title">
        <li>
          <button type="button" class="link" id="open-sessions" aria-current={props.current === 'sessions' ? 'true' : undefined} onClick={() => props.onOpen('sessions')}>
            Sessions: where you are signed in
          </button>
        </li>
        <li>
          <button type="button" class="link" id="open-two-step" aria-current={props.current === 'security' ? 'true' : undefined} onClick={() => props.onOpen('security')}>
            Two-step verification
          </button>
        </li>
      </ul>
    </div>
  );
}
