-- id: service-new-destination
-- title: A service account connected to a network destination it has never used
-- severity: high
-- hipaa: 164.312(e)(1)
-- mitre: T1048, T1041
-- version: 1
SELECT *
FROM events
WHERE kind = 'connect'
  AND login_uid IS NULL
  AND first_seen_destination
  AND dst_addr NOT LIKE '127.%'
  AND dst_addr <> '::1'
