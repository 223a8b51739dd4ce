-- live_viewers_seen keeps one row per viewer a stream ever had, so that each
-- counts once in its unique viewers; nothing deleted them, so the table grew
-- with every viewer of every stream for ever. Once a stream has ended its
-- unique-viewer figure is final (live_viewer_counts keeps it) and no event
-- changes its counts, so the reconciler now deletes the marks of streams
-- that ended longer ago than the session retention, in bounded batches.

GRANT DELETE ON TABLE live_viewers_seen TO live_api;
