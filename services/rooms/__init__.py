"""Rooms: public and private group rooms, membership, public timelines, mentions."""
