// The composers' drafts (src/app/composer.ts): each conversation keeps its own unsent
// text, and a refused one comes back only where no other draft was written.
// Vitest, with the rest of web/chat's unit tests (`npm run test:node`).
import { describe, expect, it } from 'vitest';
import { Drafts } from '../src/app/composer.ts';

describe('Drafts', () => {
  it('keeps each conversation its own text', () => {
    const d = new Drafts();
    d.set('alice', 'hello a');
    d.set('room:1', 'hello room');
    expect(d.get('alice')).toBe('hello a');
    expect(d.get('room:1')).toBe('hello room');
    expect(d.get('bob')).toBe('');
  });

  it('forgets an emptied draft', () => {
    const d = new Drafts();
    d.set('alice', 'x');
    d.set('alice', '');
    expect(d.get('alice')).toBe('');
  });

  it('puts a refused text back only where no other draft was written', () => {
    const d = new Drafts();
    d.restore('alice', 'refused');
    expect(d.get('alice')).toBe('refused');
    d.set('bob', 'written meanwhile');
    d.restore('bob', 'refused');
    expect(d.get('bob')).toBe('written meanwhile');
  });
});
