//! Read queries behind the HTTP API.

use rusqlite::{params_from_iter, Connection};

use crate::domain::session::{Outcome, SessionRecord};

#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    pub site: Option<String>,
    pub charger: Option<String>,
    /// Sessions that started at or after (ms).
    pub from: Option<i64>,
    /// Sessions that started before (ms).
    pub to: Option<i64>,
    pub limit: usize,
}

const SESSION_COLS: &str = "site, charger, session_id, session_key, id_tag, vehicle, started, \
    charging_started, completed, ended, outcome, energy_kwh, peak_kw, avg_kw, soc_start, soc_end, \
    target_soc_pct, time_to_complete_s, idle_s";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let outcome: Option<String> = r.get(10)?;
    Ok(SessionRecord {
        site: r.get(0)?,
        charger: r.get(1)?,
        session_id: r.get(2)?,
        session_key: r.get(3)?,
        id_tag: r.get(4)?,
        vehicle: r.get(5)?,
        started: r.get(6)?,
        charging_started: r.get(7)?,
        completed: r.get(8)?,
        ended: r.get(9)?,
        outcome: outcome.as_deref().and_then(Outcome::parse),
        energy_kwh: r.get(11)?,
        peak_kw: r.get(12)?,
        avg_kw: r.get(13)?,
        soc_start: r.get(14)?,
        soc_end: r.get(15)?,
        target_soc_pct: r.get(16)?,
        time_to_complete_s: r.get(17)?,
        idle_s: r.get(18)?,
    })
}

/// Sessions, newest first.
pub fn sessions(conn: &Connection, f: &SessionFilter) -> rusqlite::Result<Vec<SessionRecord>> {
    let mut sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(s) = &f.site {
        sql.push_str(" AND site = ?");
        args.push(s.clone().into());
    }
    if let Some(c) = &f.charger {
        sql.push_str(" AND charger = ?");
        args.push(c.clone().into());
    }
    if let Some(from) = f.from {
        sql.push_str(" AND started >= ?");
        args.push(from.into());
    }
    if let Some(to) = f.to {
        sql.push_str(" AND started < ?");
        args.push(to.into());
    }
    sql.push_str(" ORDER BY started DESC, session_key DESC LIMIT ?");
    args.push((f.limit.max(1) as i64).into());
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(params_from_iter(args), session_row)?;
    rows.collect()
}

/// The query of [`sessions_overlapping`]: `?1` = to, `?2` = from, `?3` = site. Two parts,
/// each bounded by the `ended` index: sessions ended after `from`, and open ones. (The old
/// `started < to AND (ended IS NULL OR ended > from)` read every session since the first.)
/// `+started` and `+site` keep the planner off the indexes on them, which bound it only from
/// above or not at all (one site is every session of a one-site install).
pub(crate) fn sessions_overlapping_sql(by_site: bool) -> String {
    let site = if by_site { " AND +site = ?3" } else { "" };
    format!(
        "SELECT {SESSION_COLS} FROM sessions WHERE ended > ?2 AND +started < ?1{site}
         UNION ALL
         SELECT {SESSION_COLS} FROM sessions WHERE ended IS NULL AND +started < ?1{site}"
    )
}

/// Sessions overlapping `[from, to)` (for usage statistics), oldest first.
pub fn sessions_overlapping(
    conn: &Connection,
    site: Option<&str>,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<SessionRecord>> {
    let sql = sessions_overlapping_sql(site.is_some());
    let mut args: Vec<rusqlite::types::Value> = vec![to.into(), from.into()];
    if let Some(s) = site {
        args.push(s.to_string().into());
    }
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(params_from_iter(args), session_row)?;
    let mut v: Vec<SessionRecord> = rows.collect::<rusqlite::Result<_>>()?;
    // Sorted here: an ORDER BY makes the planner walk the `started` index from the start.
    v.sort_by_key(|r| r.started);
    Ok(v)
}
