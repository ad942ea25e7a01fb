// src/app/format.ts: the voice "Play" reads with (web/chat/README.md, "Play").
import { describe, expect, it } from 'vitest';

import { localVoice } from '../src/app/format.ts';

const voice = (name: string, lang: string, localService: boolean, isDefault = false) => ({ name, lang, localService, default: isDefault });

describe('localVoice', () => {
  it('never picks a network voice: the text would leave the device', () => {
    // Audit finding: Play spoke with the browser's default voice, which may be a
    // network one (Android's, an extension's): the decrypted text went to a server.
    expect(localVoice([voice('Cloud', 'en-US', false, true)], 'en-US')).toBeNull();
    expect(localVoice([], 'en-US')).toBeNull();
  });

  it("prefers the page's language, then the default, among the device's voices", () => {
    const voices = [voice('Cloud', 'en-US', false, true), voice('Anna', 'de-DE', true, true), voice('Sam', 'en-GB', true), voice('Ava', 'en-US', true)];
    expect(localVoice(voices, 'en-US')?.name).toBe('Sam');
    expect(localVoice(voices, 'de')?.name).toBe('Anna');
    expect(localVoice(voices, 'fr-FR')?.name).toBe('Anna'); // no French voice: the device's default
  });
});
