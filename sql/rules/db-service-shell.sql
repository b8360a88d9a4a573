-- id: db-service-shell
-- title: A database server started a shell
-- severity: critical
-- hipaa: 164.312(a)(1)
-- mitre: T1059.004, T1190
-- version: 1
-- Suffix matches rather than regexp_like(path, '/(sh|bash|...)$'): the same
-- test, but a regular expression is compiled again for every batch, which
-- cost this rule pack a tenth of its throughput (see sql/README.md).
SELECT *
FROM events
WHERE kind = 'exec'
  AND (path LIKE '%/sh' OR path LIKE '%/bash' OR path LIKE '%/dash'
       OR path LIKE '%/zsh' OR path LIKE '%/ksh' OR path LIKE '%/csh'
       OR path LIKE '%/tcsh')
  AND (parent_exe LIKE '%/postgres' OR parent_exe LIKE '%/mysqld'
       OR parent_exe LIKE '%/mariadbd' OR parent_exe LIKE '%/sqlservr'
       OR parent_exe LIKE '%/mongod' OR parent_exe LIKE '%/oracle')
