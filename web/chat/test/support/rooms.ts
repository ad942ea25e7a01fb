/**
 * Private rooms on test/support/fakeServer.ts, as the tests of room sends set them up.
 */
import type { ParleyClient } from '../../src/app/client.ts';
import { deviceDigest, skdPayload } from '../../src/app/rooms.ts';
import { b64encode, utf8 } from '../../src/crypto/index.ts';
import { GroupSession } from '../../src/crypto/session.ts';
import type * as W from '../../src/generated/contract.ts';
import { connected, people } from './clients.ts';
import type { FakeServer, Peer } from './fakeServer.ts';

/** Bob, connected, and alice in the private room `roomId` ('team'); `A`, alice's id. */
export async function teamRoom(roomId: string): Promise<Awaited<ReturnType<typeof people>> & { A: string }> {
  const found = await people();
  const { server, bob, alice } = found;
  server.rooms.set(roomId, { name: 'team', members: [bob.me, alice.user.user_id] });
  await connected(bob, server);
  return { ...found, A: alice.user.user_id };
}

/** Bob and alice's room `roomId`, bob connected and a message ('before carol') sent to
 * it; then carol joins as the rooms service does it: the version is raised first, and one
 * read of the members then misses her. `want`: the digest of the devices a send must now
 * name (alice's and carol's); `devicesChanged`: the gateway's refusal of one naming others. */
export async function carolJoinsMidRead(
  server: FakeServer,
  bob: ParleyClient,
  alice: Peer,
  carol: Peer,
  roomId: string,
): Promise<{ A: string; C: string; want: string; devicesChanged: Omit<W.Error, 'id'> }> {
  const [A, C] = [alice.user.user_id, carol.user.user_id];
  const room: { name: string; members: string[]; version: number; memberReads?: string[][] } = { name: 'team', members: [bob.me, A], version: 1 };
  server.rooms.set(roomId, room);
  await connected(bob, server);
  await bob.sendRoom(roomId, 'before carol');
  room.version = 2;
  room.memberReads = [[bob.me, A]];
  room.members = [bob.me, A, C];
  const want = await deviceDigest([[A, 1], [C, 1]]);
  const lists = [{ user: bob.me, devices: [] }, { user: A, devices: [1] }, { user: C, devices: [1] }];
  return { A, C, want, devicesChanged: { op: 'error', code: 'devices_changed', message: 'The room has other devices.', devices: lists } };
}

/** A member's chain in the room `roomId`: its messages stored in the room's log, and
 * its key (test/roomPending*.test.ts). */
export async function chain(server: FakeServer, roomId: string, member: Peer) {
  const group = await GroupSession.create(roomId);
  const distribution = await group.distributionMessage(); // opens every message below
  return {
    /** `text` encrypted on the chain and stored in the log (not pushed). */
    say: async (text: string): Promise<W.RoomMessage> => server.roomMessage(roomId, member.user.user_id, member.deviceId, await group.encrypt(utf8(text))),
    /** The chain's key reaches bob's inbox (a pairwise control payload), pushed. */
    key: async (): Promise<void> => void server.push(await member.message(server, skdPayload(roomId, b64encode(distribution)))),
    distribution: b64encode(distribution),
  };
}

/** A room's history as text lines, its pending state, and the log reads made of it. */
export const texts = (bob: ParleyClient, roomId: string) => bob.roomHistory(roomId).map((e) => (e.kind === 'message' ? e.text : `${e.kind}: ${e.text}`));
export const state = (bob: ParleyClient, roomId: string) => ({ pending: bob.roomPending(roomId), unkept: bob.roomUnkept(roomId), cursor: bob.roomCursor(roomId) });
export const logReads = (server: FakeServer, roomId: string) => server.logReads.filter(([room]) => room === roomId).map(([, after]) => after);
