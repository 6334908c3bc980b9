"""Backups of the whole cluster, with Zeebe's backup API (DESIGN section 5).

How a backup is taken (``POST /actuator/backups {"backupId": N}`` on any broker):

1. The broker that got the request records the backup in the store
   (``store.create``: 409 if the id exists or is not above the newest one), then
   proposes a checkpoint command to every partition (``_checkpoint``, through
   the gateway like any control command). The checkpoint is an entry of its
   own in each partition's log: the records before it are in the backup, the
   ones after it are not. Writes go on meanwhile.
2. On each partition, the replica that leads when it applies the checkpoint
   takes that partition's backup (``taker.BackupTaker``): on the partition
   thread it only hard-links the newest snapshot file and the journal segments
   up to the checkpoint entry (cheap, and the links keep them even if the
   journal compacts them); a background thread copies them to the store, the
   last segment cut right after the checkpoint entry, then writes the
   partition's manifest. The partition thread never waits for the copy.
3. ``GET /actuator/backups/{id}`` reads the store: COMPLETED once every
   partition's manifest is there, FAILED if one failed, IN_PROGRESS meanwhile,
   INCOMPLETE if some never completed (``store.STALE_AFTER``).

Restore (``broker restore --backup-id N --config FILE``, ``restore.py``) puts each
partition this broker hosts back into an empty data directory: the snapshot, the
journal through the checkpoint, and the Raft term. Every replica restores the
same partition backup, so the restored replicas agree.

The store is an interface (``store.BackupStore``); ``data.backup.store:
filesystem`` keeps backups in a directory (a shared mount in production, as
Zeebe's filesystem store). Another store (S3-compatible) implements the same
few methods.
"""
