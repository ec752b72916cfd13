//! Alert history in embedded SQLite, for the web UI and `GET /api/v1/alerts`.
//!
//! Workers hand alerts to a writer thread through a bounded channel, so a
//! slow disk never stalls evaluation; if the channel is full the alerts are
//! not stored (they still go to every output), and the drop is counted and
//! logged. The table keeps the newest `max_alerts` rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::alert::AlertSink;
use crate::alert::{Alert, Priority};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Keep alert history for the UI and API.
    pub enabled: bool,
    /// Database file. Default: `$XDG_DATA_HOME/peregrine/alerts.sqlite` or
    /// `~/.local/share/peregrine/alerts.sqlite`.
    pub path: Option<PathBuf>,
    /// Newest alerts kept; older ones are deleted.
    pub max_alerts: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            path: None,
            max_alerts: 100_000,
        }
    }
}

impl StoreConfig {
    pub fn resolved_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.path {
            return Some(p.clone());
        }
        Some(
            crate::paths::xdg_dir("XDG_DATA_HOME", ".local/share")?.join("peregrine/alerts.sqlite"),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("alert store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("alert store query: {0}")]
    Query(#[from] rusqlite::Error),
}

/// Filters of an alert query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertQuery {
    pub tenant: Option<String>,
    /// `peregrine.cluster`.
    pub cluster: Option<String>,
    pub rule: Option<String>,
    pub module: Option<String>,
    /// At least this severe.
    pub min_priority: Option<Priority>,
    /// Substring of the output text.
    pub q: Option<String>,
    /// Only alerts with a smaller id (for paging backwards).
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct StoredAlert {
    pub id: i64,
    /// The alert in Falco's JSON shape.
    pub alert: serde_json::Value,
}

#[derive(Debug, Serialize, Default)]
pub struct Summary {
    pub total: u64,
    pub by_priority: Vec<(String, u64)>,
    pub by_rule: Vec<(String, u64)>,
    pub by_tenant: Vec<(String, u64)>,
    pub by_cluster: Vec<(String, u64)>,
}

fn priority_rank(p: Priority) -> i64 {
    p as i64
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path).map_err(err)?;
    // WAL: the API reads while the writer writes.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS alerts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time_ns INTEGER NOT NULL,
            rule TEXT NOT NULL,
            priority INTEGER NOT NULL,
            tenant TEXT NOT NULL,
            module TEXT NOT NULL,
            output TEXT NOT NULL,
            falco_json TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS alerts_tenant ON alerts (tenant, id);
         CREATE INDEX IF NOT EXISTS alerts_rule ON alerts (rule, id);",
    )
    .map_err(err)?;
    add_cluster_column(&conn).map_err(err)?;
    Ok(conn)
}

/// Stores written before alerts named their cluster get the column, their
/// alerts the cluster they had implicitly: the tenant's id.
fn add_cluster_column(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('alerts') WHERE name = 'cluster'")?
        .exists([])?;
    if !has {
        conn.execute_batch(
            "ALTER TABLE alerts ADD COLUMN cluster TEXT NOT NULL DEFAULT '';
             UPDATE alerts SET cluster = tenant WHERE cluster = '';",
        )?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS alerts_cluster ON alerts (cluster, id);")
}

/// The alert history.
pub struct AlertStore {
    path: PathBuf,
    tx: crossbeam_channel::Sender<Vec<Alert>>,
    dropped: Arc<AtomicU64>,
}

/// Batches waiting for the writer; beyond this the store sheds load.
const WRITE_QUEUE: usize = 1_024;

impl AlertStore {
    pub fn open(path: &Path, max_alerts: u64) -> Result<Arc<Self>, StoreError> {
        let mut conn = open(path)?;
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Alert>>(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("peregrine-store".into())
            .spawn(move || {
                for batch in rx {
                    if let Err(e) = write(&mut conn, &batch, max_alerts) {
                        metrics::counter!("peregrine_store_dropped_total", "reason" => "write_error")
                            .increment(batch.len() as u64);
                        tracing::error!("cannot store {} alerts: {e}", batch.len());
                    }
                }
            })
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Arc::new(AlertStore {
            path: path.to_path_buf(),
            tx,
            dropped: Arc::default(),
        }))
    }

    /// Alerts not stored because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A reading connection (the API opens one per request, off the async threads).
    fn reader(&self) -> Result<Connection, StoreError> {
        open(&self.path)
    }

    pub fn query(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
        let conn = self.reader()?;
        let mut sql = String::from("SELECT id, falco_json FROM alerts WHERE 1=1");
        let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
        if let Some(t) = &q.tenant {
            sql.push_str(" AND tenant = ?");
            args.push(Box::new(t.clone()));
        }
        if let Some(c) = &q.cluster {
            sql.push_str(" AND cluster = ?");
            args.push(Box::new(c.clone()));
        }
        if let Some(r) = &q.rule {
            sql.push_str(" AND rule = ?");
            args.push(Box::new(r.clone()));
        }
        if let Some(m) = &q.module {
            sql.push_str(" AND module = ?");
            args.push(Box::new(m.clone()));
        }
        if let Some(p) = q.min_priority {
            sql.push_str(" AND priority <= ?");
            args.push(Box::new(priority_rank(p)));
        }
        if let Some(text) = &q.q {
            // instr() rather than LIKE: no wildcard characters to escape.
            sql.push_str(" AND instr(output, ?) > 0");
            args.push(Box::new(text.clone()));
        }
        if let Some(b) = q.before {
            sql.push_str(" AND id < ?");
            args.push(Box::new(b));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(Box::new(i64::from(q.limit.unwrap_or(100).clamp(1, 1_000))));
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(
            rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())),
            |row| {
                let json: String = row.get(1)?;
                Ok(StoredAlert {
                    id: row.get(0)?,
                    alert: serde_json::from_str(&json).unwrap_or(serde_json::Value::Null),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts over the stored alerts, optionally for one tenant.
    pub fn summary(&self, tenant: Option<&str>) -> Result<Summary, StoreError> {
        let conn = self.reader()?;
        let count = |sql: &str| -> Result<Vec<(String, u64)>, StoreError> {
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map(params![tenant], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let total: i64 = conn
            .query_row(
                "SELECT count(*) FROM alerts WHERE ?1 IS NULL OR tenant = ?1",
                params![tenant],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let by_priority = count(
            "SELECT CAST(priority AS TEXT), count(*) FROM alerts WHERE ?1 IS NULL OR tenant = ?1 \
             GROUP BY priority ORDER BY priority",
        )?;
        // Stored as the index in severity order, most severe first.
        let names = Priority::ALL;
        let by_priority = by_priority
            .into_iter()
            .filter_map(|(p, n)| {
                let i: usize = p.parse().ok()?;
                Some((names.get(i)?.as_str().to_string(), n))
            })
            .collect();
        Ok(Summary {
            total: total as u64,
            by_priority,
            by_rule: count(
                "SELECT rule, count(*) AS n FROM alerts WHERE ?1 IS NULL OR tenant = ?1 GROUP BY rule ORDER BY n DESC LIMIT 20",
            )?,
            by_tenant: count(
                "SELECT tenant, count(*) AS n FROM alerts WHERE ?1 IS NULL OR tenant = ?1 GROUP BY tenant ORDER BY n DESC LIMIT 50",
            )?,
            by_cluster: count(
                "SELECT cluster, count(*) AS n FROM alerts WHERE ?1 IS NULL OR tenant = ?1 GROUP BY cluster ORDER BY n DESC LIMIT 50",
            )?,
        })
    }
}

fn write(conn: &mut Connection, alerts: &[Alert], max_alerts: u64) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO alerts (time_ns, rule, priority, tenant, cluster, module, output, falco_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )?;
        for a in alerts {
            stmt.execute(params![
                a.time_unix_nanos,
                a.rule,
                priority_rank(a.priority),
                &*a.tenant,
                &*a.cluster,
                a.module,
                a.output,
                a.to_falco_json().to_string()
            ])?;
        }
    }
    tx.execute(
        "DELETE FROM alerts WHERE id <= (SELECT max(id) FROM alerts) - ?",
        params![max_alerts as i64],
    )?;
    tx.commit()
}

impl AlertSink for AlertStore {
    fn submit(&self, alerts: Vec<Alert>) {
        let n = alerts.len() as u64;
        if let Err(e) = self.tx.try_send(alerts) {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("peregrine_store_dropped_total", "reason" => "queue_full")
                .increment(n);
            tracing::warn!(
                "alert store is behind: {n} alerts not stored ({e}); outputs still receive them"
            );
        }
    }
}

/// Hands every batch to several sinks: the outputs and the store. Each
/// holds a share of the batch's durability.
pub struct Tee(pub Vec<Arc<dyn AlertSink>>);

impl AlertSink for Tee {
    fn submit(&self, alerts: Vec<Alert>) {
        self.submit_durable(alerts, crate::durable::Durable::none());
    }

    fn submit_durable(&self, alerts: Vec<Alert>, durable: crate::durable::Durable) {
        match self.0.split_last() {
            Some((last, rest)) => {
                for s in rest {
                    s.submit_durable(alerts.clone(), durable.clone());
                }
                last.submit_durable(alerts, durable);
            }
            None => durable.release(),
        }
    }
}
