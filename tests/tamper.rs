//! The tamper cases (`tests/tamper_cases`) on SQLite: each copy of the store is a copy of the
//! database file, changed with rusqlite.

mod support;
#[macro_use]
mod tamper_cases;

use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use tamper_cases::{Backend, Db, Row};

struct Sqlite;

fn sqlite(_test: &str) -> Option<Sqlite> {
    Some(Sqlite)
}

fn file_of(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("sqlite://").expect("an sqlite:// URL"))
}

impl Backend for Sqlite {
    fn new_store(&self, dir: &Path) -> String {
        format!("sqlite://{}", dir.join("w.db").display())
    }

    fn copy_store(&self, from: &str, dir: &Path) -> String {
        let (from, to) = (file_of(from), dir.join("w.db"));
        std::fs::copy(&from, &to).expect("copy the database");
        // If the last connection did not checkpoint, committed pages are still in the WAL.
        let wal = PathBuf::from(format!("{}-wal", from.display()));
        if wal.exists() {
            std::fs::copy(&wal, format!("{}-wal", to.display())).expect("copy the WAL");
        }
        format!("sqlite://{}", to.display())
    }

    fn open_db(&self, url: &str) -> Box<dyn Db + '_> {
        // Dropping the connection (the last one) checkpoints the WAL into the file.
        Box::new(Connection::open(file_of(url)).expect("open the copy with rusqlite"))
    }
}

impl Db for Connection {
    fn data_at(&mut self, position: u64) -> String {
        self.query_row("SELECT data FROM events WHERE position = ?1", [position], |r| r.get(0))
            .unwrap()
    }

    fn set_data(&mut self, position: u64, data: &str) -> u64 {
        self.execute(
            "UPDATE events SET data = ?1 WHERE position = ?2",
            params![data, position],
        )
        .unwrap() as u64
    }

    fn event_type_at(&mut self, position: u64) -> String {
        self.query_row("SELECT event_type FROM events WHERE position = ?1", [position], |r| {
            r.get(0)
        })
        .unwrap()
    }

    fn delete_positions(&mut self, first: u64, last: u64) -> u64 {
        self.execute(
            "DELETE FROM events WHERE position BETWEEN ?1 AND ?2",
            params![first as i64, last as i64],
        )
        .unwrap() as u64
    }

    fn rows(&mut self) -> Vec<Row> {
        let mut stmt = self
            .prepare("SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash FROM events ORDER BY position")
            .unwrap();
        stmt.query_map([], |r| {
            Ok(Row {
                position: r.get(0)?,
                stream: r.get(1)?,
                version: r.get(2)?,
                event_id: r.get(3)?,
                event_type: r.get(4)?,
                schema_version: r.get(5)?,
                recorded_at: r.get(6)?,
                data: r.get(7)?,
                hash: r.get(8)?,
                prev_hash: r.get(9)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn replace_rows(&mut self, rows: &[Row]) {
        let tx = self.transaction().unwrap();
        tx.execute("DELETE FROM events", []).unwrap();
        for r in rows {
            tx.execute(
                "INSERT INTO events (position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![r.position, r.stream, r.version, r.event_id, r.event_type, r.schema_version, r.recorded_at, r.data, r.hash, r.prev_hash],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
}

tamper_suite!(sqlite);
