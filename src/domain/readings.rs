//! Every recorded reading, as the write model needs it, in as little memory as it can hold.
//!
//! The write state must know every reading: a repost is recognised by its meter, flow and
//! interval, an overlap is refused, a correction names a reading by its event id. Readings
//! are most of the log, so this is the part of the state that grows with events: one fixed
//! 96-byte [`Slot`] per reading in chunks of 65,536, one 12-byte entry in an id table keyed by 64
//! bits of the event id, and one 16-byte entry in its meter's sorted interval list —
//! about 130 bytes per reading with the tables' slack, where a map of owned records
//! (`HashMap<Uuid, ReadingState>` with its own strings, and a B-tree of intervals) took about
//! 600. What only some readings have (a job, corrections) lives in a side table.

use super::events::{ReadingCorrected, ReadingRecorded, meter_stream};
use super::ids::{JobId, MeterId};
use super::quantity::EnergyWh;
use super::tariff::Flow;
use super::time::Interval;
use crate::snapfile::{Dec, Enc, Fields, SnapError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use uuid::Uuid;

/// A reading as the write model sees it (materialised from its slot on demand).
#[derive(Clone, Debug, PartialEq)]
pub struct ReadingState {
    pub meter_id: MeterId,
    pub flow: Flow,
    pub interval: Interval,
    pub posted_wh: EnergyWh,
    pub current_wh: EnergyWh,
    pub current_eu: Decimal,
    pub tariff_version: u32,
    pub stream: String,
    pub version: u64,
    /// How many corrections it has had, and the last one: (event id, Wh, reason).
    pub corrections: u32,
    pub last_correction: Option<(Uuid, EnergyWh, String)>,
    pub job_id: Option<JobId>,
}

/// One reading. `extra` is 1 + its index in [`Readings::extras`], or 0.
#[derive(Clone, Debug, PartialEq)]
struct Slot {
    event_id: Uuid,
    series: u32,
    extra: u32,
    version: u64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    posted_wh: EnergyWh,
    current_eu: Decimal,
    tariff_version: u32,
}

/// What only some readings carry.
#[derive(Clone, Debug, PartialEq)]
struct Extra {
    current_wh: EnergyWh,
    corrections: u32,
    last_correction: Option<(Uuid, EnergyWh, String)>,
    job_id: Option<JobId>,
}

/// One meter's readings of one flow, by interval start.
#[derive(Clone, Debug, PartialEq)]
struct Series {
    meter_id: MeterId,
    flow: Flow,
    by_start: Vec<(DateTime<Utc>, u32)>,
}

/// An event id's [`prefix`] is already uniform: it is its own hash.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PrefixMap = HashMap<u64, u32, BuildHasherDefault<PrefixHasher>>;

/// 64 uniform bits of an event id: its two halves folded together. Either half alone has
/// fixed bits (the version nibble in the first, the variant bits in the second), and a table
/// indexed by the low bits of the first half would use one bucket in sixteen.
fn prefix(id: &Uuid) -> u64 {
    let v = id.as_u128();
    (v >> 64) as u64 ^ v as u64
}

/// Slots per chunk of [`Chunked`].
const CHUNK: usize = 1 << 16;

/// A list that grows a fixed chunk at a time: growing never copies it, nor holds two copies
/// at once (a `Vec` of 10M slots grows by doubling to 1.6 GB, briefly beside the old 0.8 GB).
#[derive(Clone, Debug, PartialEq)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn push(&mut self, v: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(v);
        self.len += 1;
    }
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> std::ops::Index<usize> for Chunked<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> std::ops::IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Readings {
    slots: Chunked<Slot>,
    extras: Vec<Extra>,
    series: Vec<Series>,
    /// Meter → series index + 1 per flow (0: none yet).
    by_meter: HashMap<MeterId, [u32; 4]>,
    /// 64 bits of the event id ([`prefix`]) → slot. Ids whose prefix is shared by another
    /// reading's live in `collided`, keyed by the whole id.
    ids: PrefixMap,
    collided: HashMap<Uuid, u32>,
}

fn flow_index(f: Flow) -> usize {
    match f {
        Flow::Generated => 0,
        Flow::Stored => 1,
        Flow::Dispatched => 2,
        Flow::Consumed => 3,
    }
}

const FLOWS: [Flow; 4] = [Flow::Generated, Flow::Stored, Flow::Dispatched, Flow::Consumed];

fn damaged(what: impl std::fmt::Display) -> SnapError {
    SnapError::Damaged(format!("readings: {what}"))
}

fn put_time<W: std::io::Write>(e: &mut Enc<W>, t: &DateTime<Utc>) -> std::io::Result<()> {
    e.i64(t.timestamp())?;
    e.u32(t.timestamp_subsec_nanos())
}

/// Bytes of one slot in a snapshot, and of its fields in [`Readings::encode`]'s order.
const SLOT_BYTES: usize = 16 + 4 + 4 + 8 + 12 + 12 + 16 + 16 + 4;

/// A time of a fixed-size record, as [`put_time`] wrote it.
fn take_time(c: &mut Fields) -> Result<DateTime<Utc>, SnapError> {
    let (secs, nanos) = (i64::from_le_bytes(c.take()), u32::from_le_bytes(c.take()));
    DateTime::from_timestamp(secs, nanos).ok_or_else(|| damaged(format!("time {secs}.{nanos}")))
}

/// A decimal as its 16 bytes (scale included, so `1.50` stays `1.50`).
fn put_decimal<W: std::io::Write>(e: &mut Enc<W>, v: &Decimal) -> std::io::Result<()> {
    e.bytes(&v.serialize())
}

fn get_decimal<R: std::io::Read>(d: &mut Dec<R>) -> Result<Decimal, SnapError> {
    let mut b = [0u8; 16];
    d.fill(&mut b)?;
    Ok(Decimal::deserialize(b))
}

fn get_wh<R: std::io::Read>(d: &mut Dec<R>) -> Result<EnergyWh, SnapError> {
    EnergyWh::new(get_decimal(d)?).map_err(damaged)
}

fn get_id<R: std::io::Read, T>(d: &mut Dec<R>, parse: fn(&str) -> Result<T, String>) -> Result<T, SnapError> {
    parse(&d.string()?).map_err(damaged)
}

/// Marks a prefix whose readings are all in `collided`.
const COLLIDED: u32 = u32::MAX;

impl Readings {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.len() == 0
    }

    fn slot_of(&self, id: &Uuid) -> Option<u32> {
        match self.ids.get(&prefix(id)) {
            None => None,
            Some(&COLLIDED) => self.collided.get(id).copied(),
            Some(&i) => (self.slots[i as usize].event_id == *id).then_some(i),
        }
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.slot_of(id).is_some()
    }

    /// Where a reading is recorded: `(stream, version)`.
    pub fn locate(&self, id: &Uuid) -> Option<(String, u64)> {
        let s = &self.slots[self.slot_of(id)? as usize];
        Some((meter_stream(&self.series[s.series as usize].meter_id), s.version))
    }

    pub fn get(&self, id: &Uuid) -> Option<ReadingState> {
        let s = &self.slots[self.slot_of(id)? as usize];
        let series = &self.series[s.series as usize];
        let extra = (s.extra > 0).then(|| &self.extras[s.extra as usize - 1]);
        Some(ReadingState {
            meter_id: series.meter_id.clone(),
            flow: series.flow,
            interval: Interval {
                start: s.start,
                end: s.end,
            },
            posted_wh: s.posted_wh,
            current_wh: extra.map_or(s.posted_wh, |x| x.current_wh),
            current_eu: s.current_eu,
            tariff_version: s.tariff_version,
            stream: meter_stream(&series.meter_id),
            version: s.version,
            corrections: extra.map_or(0, |x| x.corrections),
            last_correction: extra.and_then(|x| x.last_correction.clone()),
            job_id: extra.and_then(|x| x.job_id.clone()),
        })
    }

    /// The recorded reading of this meter and flow whose interval overlaps `interval`, if
    /// any: `(start, end, event id)`. Recorded intervals of one series never overlap, so the
    /// only candidate is the last one that starts before `interval` ends.
    pub fn overlapping(
        &self,
        meter: &MeterId,
        flow: Flow,
        interval: &Interval,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>, Uuid)> {
        let series = self.by_meter.get(meter)?[flow_index(flow)].checked_sub(1)?;
        let by_start = &self.series[series as usize].by_start;
        let before_end = by_start.partition_point(|(s, _)| *s < interval.end);
        let (_, slot) = by_start.get(before_end.checked_sub(1)?)?;
        let s = &self.slots[*slot as usize];
        (s.end > interval.start).then_some((s.start, s.end, s.event_id))
    }

    /// Records a reading event (its stream version is `version`). A second reading of the
    /// same series and start (only in a tampered log) replaces the first in the interval
    /// list, as the map it stands for would.
    pub fn insert(&mut self, event_id: Uuid, r: &ReadingRecorded, version: u64) {
        let fi = flow_index(r.flow);
        let entry = self.by_meter.entry(r.meter_id.clone()).or_insert([0; 4]);
        if entry[fi] == 0 {
            self.series.push(Series {
                meter_id: r.meter_id.clone(),
                flow: r.flow,
                by_start: Vec::new(),
            });
            entry[fi] = self.series.len() as u32;
        }
        let series = entry[fi] - 1;
        let extra = if r.job_id.is_some() {
            self.extras.push(Extra {
                current_wh: r.energy_wh,
                corrections: 0,
                last_correction: None,
                job_id: r.job_id.clone(),
            });
            self.extras.len() as u32
        } else {
            0
        };
        let slot = self.slots.len() as u32;
        self.slots.push(Slot {
            event_id,
            series,
            extra,
            version,
            start: r.start,
            end: r.end,
            posted_wh: r.energy_wh,
            current_eu: r.price.amount_eu,
            tariff_version: r.price.tariff_version,
        });
        let by_start = &mut self.series[series as usize].by_start;
        match by_start.last() {
            Some((last, _)) if *last >= r.start => match by_start.binary_search_by(|(s, _)| s.cmp(&r.start)) {
                Ok(i) => by_start[i].1 = slot,
                Err(i) => by_start.insert(i, (r.start, slot)),
            },
            _ => by_start.push((r.start, slot)),
        }
        self.index_id(event_id, slot);
    }

    fn index_id(&mut self, id: Uuid, slot: u32) {
        let p = prefix(&id);
        match self.ids.get(&p).copied() {
            None => {
                self.ids.insert(p, slot);
            }
            Some(COLLIDED) => {
                self.collided.insert(id, slot);
            }
            Some(other) => {
                let other_id = self.slots[other as usize].event_id;
                if other_id == id {
                    // The same id again (a tampered log): the later reading answers for it.
                    self.ids.insert(p, slot);
                } else {
                    self.collided.insert(other_id, other);
                    self.collided.insert(id, slot);
                    self.ids.insert(p, COLLIDED);
                }
            }
        }
    }

    /// Writes every reading to a snapshot (`ledger::snapshot`): side table, slots, series
    /// and id tables, each as it stands.
    pub fn encode<W: std::io::Write>(&self, e: &mut Enc<W>) -> std::io::Result<()> {
        e.u64(self.extras.len() as u64)?;
        for x in &self.extras {
            put_decimal(e, &x.current_wh.value())?;
            e.u32(x.corrections)?;
            match &x.last_correction {
                None => e.u8(0)?,
                Some((id, wh, reason)) => {
                    e.u8(1)?;
                    e.u128(id.as_u128())?;
                    put_decimal(e, &wh.value())?;
                    e.field(reason.as_bytes())?;
                }
            }
            match &x.job_id {
                None => e.u8(0)?,
                Some(j) => {
                    e.u8(1)?;
                    e.field(j.as_str().as_bytes())?;
                }
            }
        }
        e.u64(self.slots.len() as u64)?;
        for s in self.slots.iter() {
            e.u128(s.event_id.as_u128())?;
            e.u32(s.series)?;
            e.u32(s.extra)?;
            e.u64(s.version)?;
            put_time(e, &s.start)?;
            put_time(e, &s.end)?;
            put_decimal(e, &s.posted_wh.value())?;
            put_decimal(e, &s.current_eu)?;
            e.u32(s.tariff_version)?;
        }
        e.u64(self.series.len() as u64)?;
        for s in &self.series {
            e.field(s.meter_id.as_str().as_bytes())?;
            e.u8(flow_index(s.flow) as u8)?;
            e.u64(s.by_start.len() as u64)?;
            for (start, slot) in &s.by_start {
                put_time(e, start)?;
                e.u32(*slot)?;
            }
        }
        // The id tables in their own iteration order: loading them in that order fills the
        // table front to back (rebuilding it from the slots, in random order, took seconds).
        e.u64(self.ids.len() as u64)?;
        for (prefix, slot) in &self.ids {
            e.u64(*prefix)?;
            e.u32(*slot)?;
        }
        e.u64(self.collided.len() as u64)?;
        for (id, slot) in &self.collided {
            e.u128(id.as_u128())?;
            e.u32(*slot)?;
        }
        Ok(())
    }

    /// Reads back what [`Readings::encode`] wrote, checking every cross-reference.
    pub fn decode<R: std::io::Read>(d: &mut Dec<R>) -> Result<Self, SnapError> {
        let mut r = Readings::default();
        let n = d.count(22)?;
        r.extras.reserve_exact(n);
        for _ in 0..n {
            let current_wh = get_wh(d)?;
            let corrections = d.u32()?;
            let last_correction = match d.u8()? {
                0 => None,
                1 => Some((Uuid::from_u128(d.u128()?), get_wh(d)?, d.string()?)),
                f => return Err(damaged(format!("flag {f}"))),
            };
            let job_id = match d.u8()? {
                0 => None,
                1 => Some(get_id(d, JobId::parse)?),
                f => return Err(damaged(format!("flag {f}"))),
            };
            r.extras.push(Extra {
                current_wh,
                corrections,
                last_correction,
                job_id,
            });
        }
        let n = d.count(SLOT_BYTES)?;
        for _ in 0..n {
            let b: [u8; SLOT_BYTES] = d.array()?;
            let mut c = Fields(&b);
            let s = Slot {
                event_id: Uuid::from_u128(u128::from_le_bytes(c.take())),
                series: u32::from_le_bytes(c.take()),
                extra: u32::from_le_bytes(c.take()),
                version: u64::from_le_bytes(c.take()),
                start: take_time(&mut c)?,
                end: take_time(&mut c)?,
                posted_wh: EnergyWh::new(Decimal::deserialize(c.take())).map_err(damaged)?,
                current_eu: Decimal::deserialize(c.take()),
                tariff_version: u32::from_le_bytes(c.take()),
            };
            if s.extra as usize > r.extras.len() {
                return Err(damaged(format!("extra {} of {}", s.extra, r.extras.len())));
            }
            r.slots.push(s);
        }
        let n = d.count(17)?;
        r.series.reserve_exact(n);
        for i in 0..n {
            let meter_id = get_id(d, MeterId::parse)?;
            let flow = *FLOWS.get(d.u8()? as usize).ok_or_else(|| damaged("an unknown flow"))?;
            let entry = r.by_meter.entry(meter_id.clone()).or_insert([0; 4]);
            if entry[flow_index(flow)] != 0 {
                return Err(damaged(format!("meter {meter_id:?} has two {flow} series")));
            }
            entry[flow_index(flow)] = i as u32 + 1;
            let m = d.count(16)?;
            let mut by_start = Vec::with_capacity(m);
            for _ in 0..m {
                let b: [u8; 16] = d.array()?;
                let mut c = Fields(&b);
                let start = take_time(&mut c)?;
                let slot = u32::from_le_bytes(c.take());
                if slot as usize >= r.slots.len() {
                    return Err(damaged(format!("slot {slot} of {}", r.slots.len())));
                }
                by_start.push((start, slot));
            }
            r.series.push(Series {
                meter_id,
                flow,
                by_start,
            });
        }
        if let Some(s) = r.slots.iter().find(|s| s.series as usize >= r.series.len()) {
            return Err(damaged(format!("series {} of {}", s.series, r.series.len())));
        }
        let known = |slot: u32| {
            if slot == COLLIDED || (slot as usize) < r.slots.len() {
                Ok(slot)
            } else {
                Err(damaged(format!("slot {slot} of {}", r.slots.len())))
            }
        };
        let n = d.count(12)?;
        let mut ids = PrefixMap::with_capacity_and_hasher(n, Default::default());
        for _ in 0..n {
            let b: [u8; 12] = d.array()?;
            let mut c = Fields(&b);
            let prefix = u64::from_le_bytes(c.take());
            ids.insert(prefix, known(u32::from_le_bytes(c.take()))?);
        }
        let n = d.count(20)?;
        let mut collided = HashMap::with_capacity(n);
        for _ in 0..n {
            let id = Uuid::from_u128(d.u128()?);
            collided.insert(id, known(d.u32()?)?);
        }
        (r.ids, r.collided) = (ids, collided);
        Ok(r)
    }

    /// Applies a correction of reading `corrected` (recorded as event `event_id`).
    pub fn correct(&mut self, event_id: Uuid, c: &ReadingCorrected) {
        let Some(slot) = self.slot_of(&c.corrected_event_id) else {
            return;
        };
        let s = &mut self.slots[slot as usize];
        if s.extra == 0 {
            self.extras.push(Extra {
                current_wh: s.posted_wh,
                corrections: 0,
                last_correction: None,
                job_id: None,
            });
            s.extra = self.extras.len() as u32;
        }
        s.current_eu = c.price.amount_eu;
        let x = &mut self.extras[s.extra as usize - 1];
        x.current_wh = c.energy_wh;
        x.corrections += 1;
        x.last_correction = Some((event_id, c.energy_wh, c.reason.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_stays_small() {
        // The per-reading cost this module promises (96 bytes a slot).
        assert!(std::mem::size_of::<Slot>() <= 96, "{}", std::mem::size_of::<Slot>());
    }

    #[test]
    fn colliding_prefixes_are_told_apart() {
        let mut r = Readings::default();
        let a = Uuid::from_u128(0x1111_2222_3333_4444_0000_0000_0000_0001);
        let b = Uuid::from_u128(0x1111_2222_3333_4445_0000_0000_0000_0000);
        let c = Uuid::from_u128(0x1111_2222_3333_4447_0000_0000_0000_0002);
        assert!(
            prefix(&a) == prefix(&b) && prefix(&b) == prefix(&c),
            "the three share a prefix"
        );
        (0..3).for_each(|i| {
            r.slots.push(Slot {
                event_id: [a, b, c][i],
                series: 0,
                extra: 0,
                version: i as u64 + 1,
                start: DateTime::<Utc>::MIN_UTC,
                end: DateTime::<Utc>::MIN_UTC,
                posted_wh: EnergyWh::parse("1").unwrap(),
                current_eu: Decimal::ZERO,
                tariff_version: 1,
            })
        });
        r.index_id(a, 0);
        assert_eq!(r.slot_of(&a), Some(0));
        assert_eq!(r.slot_of(&b), None, "same prefix, another id");
        r.index_id(b, 1);
        r.index_id(c, 2);
        assert_eq!(
            (r.slot_of(&a), r.slot_of(&b), r.slot_of(&c)),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(
            r.slot_of(&Uuid::from_u128(0x1111_2222_3333_4444_0000_0000_0000_0009)),
            None
        );
    }
}
