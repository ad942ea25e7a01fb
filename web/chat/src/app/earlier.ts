/** How many of a conversation's newest lines a page shows, and "Show earlier messages"
 * (history.ts SHOWN at a time). The lines in view stay in view: the earlier ones go
 * above them, and the list is scrolled by the height they add. */

import type { RefObject } from 'preact';
import { useLayoutEffect, useRef, useState } from 'preact/hooks';

import { SHOWN } from './history.ts';

export function useShown(list: RefObject<HTMLElement | null>): { limit: number; setLimit: (n: number) => void; more: () => void } {
  const [limit, setLimit] = useState(SHOWN);
  const height = useRef<number | null>(null); // the list's height before "more"
  useLayoutEffect(() => {
    const el = list.current;
    const before = height.current;
    height.current = null;
    if (el && before !== null) el.scrollTop += el.scrollHeight - before;
  }, [limit]);
  const more = () => {
    height.current = list.current?.scrollHeight ?? null;
    setLimit(limit + SHOWN);
  };
  return { limit, setLimit, more };
}
