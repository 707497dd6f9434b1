//! Random target memory through the task reader: the await-chain walker, the qualname reader
//! and the task reader (calibration included) must return for every version's layout, never
//! panic, whatever the bytes say.

use super::async_offsets::AsyncLayout;
use super::code::CodeCache;
use super::coro::{await_chain, qualname, Qualnames};
use super::kinds::Kinds;
use super::mem::fake::FakeMem;
use super::tasks::TaskReader;

/// Random memory whose words often point into other regions: the chain walker, the
/// qualname reader and the task reader must return, never panic, for every layout.
#[test]
fn garbage_never_panics() {
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let regions: Vec<u64> = (1..=8).map(|i| i * 0x1000_0000).collect();
    // Real type objects, so that random objects pass type checks and parsing goes deep.
    let names = [
        "coroutine",
        "generator",
        "code",
        "str",
        "int",
        "bytes",
        "_asyncio.Task",
        "_asyncio.FutureIter",
        "_asyncio.Future",
        "coroutine_wrapper",
    ];
    let types: Vec<u64> = (0..names.len() as u64)
        .map(|i| 0x9000_0000 + i * 0x1_0000)
        .collect();
    let mut deep = 0;
    for round in 0..300 {
        let mut m = FakeMem::default();
        for (tp, name) in types.iter().zip(names) {
            let mut t = vec![0u8; 352];
            t[24..32].copy_from_slice(&(tp + 0x8000).to_le_bytes());
            m.put(*tp, t);
            let mut n = name.as_bytes().to_vec();
            n.resize(4096, 0);
            m.put(tp + 0x8000, n);
        }
        for &base in &regions {
            let mut b: Vec<u8> = (0..2048).map(|_| next() as u8).collect();
            // Object headers: a small refcount and one of the types.
            for obj in (0..2048).step_by(64) {
                if next() % 2 == 0 {
                    b[obj..obj + 8].copy_from_slice(&1u64.to_le_bytes());
                    let tp = types[(next() % types.len() as u64) as usize];
                    b[obj + 8..obj + 16].copy_from_slice(&tp.to_le_bytes());
                }
            }
            for _ in 0..(round % 64) {
                let at = (next() % 255 * 8) as usize;
                let w = match next() % 4 {
                    0 => regions[(next() % 8) as usize] + next() % 32 * 64,
                    1 => next() % 4096,
                    2 => next() % 3,
                    _ => u64::MAX - next() % 4,
                };
                b[at..at + 8].copy_from_slice(&w.to_le_bytes());
            }
            m.put(base, b);
        }
        for minor in 8..=14 {
            let Some(l) = AsyncLayout::for_minor(minor) else {
                continue;
            };
            let (mut kinds, mut codes, mut names) =
                (Kinds::default(), CodeCache::default(), Qualnames::default());
            let obj = regions[(next() % 8) as usize] + next() % 32 * 64;
            let (links, awaited) = await_chain(&m, &l, &mut kinds, &mut codes, obj);
            deep += links.len() + awaited.is_some() as usize;
            let _ = qualname(&m, &l, &mut kinds, &mut names, obj);
            let mut r = TaskReader::new(l.task, round % 2 == 0);
            let _ = r.calibrate(&m, &l, &mut kinds, obj, regions[0]);
            if let Some(h) = r.head(&m, &l, &mut kinds, obj) {
                let _ = r.name(&m, &l, &mut kinds, &h);
            }
        }
    }
    // The fixed seed reaches futures and tasks at the end of chains: parsing went deep.
    assert!(deep > 0);
}
