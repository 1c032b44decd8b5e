"""The neutral model every layer shares, with no I/O and no dependency on any other layer: tables
(:mod:`.table`), relations, rows and changes as the stream carries them (:mod:`.rows`), client
transactions as the writer takes them (:mod:`.client`), and the names both ends of the WAL agree
on (:mod:`.wire`)."""
