//! The speedscope format (https://www.speedscope.app): the same stacks and weights as the
//! flame graph, as one "sampled" profile, for interactive viewing. Episode stacks keep their
//! `BLOCKED in ...` and `episode #N` frames, so they can be found with speedscope's search.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use serde_json::json;

/// Drop inferno's colour annotation (`_[i]`, `_[k]`) from a frame name.
fn plain(name: &str) -> &str {
    name.strip_suffix("_[i]")
        .or_else(|| name.strip_suffix("_[k]"))
        .unwrap_or(name)
}

/// Write `lines` (folded stacks: `a;b;c weight`) as a speedscope file named `title`.
pub fn write(lines: &[String], title: &str, out: &mut dyn Write) -> Result<()> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut frames: Vec<serde_json::Value> = Vec::new();
    let mut samples: Vec<Vec<usize>> = Vec::new();
    let mut weights: Vec<u64> = Vec::new();
    for line in lines {
        let Some((stack, weight)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(weight) = weight.parse::<u64>() else {
            continue;
        };
        let ids = stack
            .split(';')
            .map(|f| {
                let name = plain(f).to_string();
                *index.entry(name.clone()).or_insert_with(|| {
                    frames.push(json!({ "name": name }));
                    frames.len() - 1
                })
            })
            .collect();
        samples.push(ids);
        weights.push(weight);
    }
    let total: u64 = weights.iter().sum();
    let doc = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": "loopspy",
        "name": title,
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": [{
            "type": "sampled",
            "name": title,
            "unit": "milliseconds",
            "startValue": 0,
            "endValue": total,
            "samples": samples,
            "weights": weights,
        }],
    });
    serde_json::to_writer(&mut *out, &doc)?;
    out.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn shares_frames_and_keeps_weights() {
        let lines = vec![
            "main_[i];work_[i] 30".to_string(),
            "BLOCKED in x_[k];main_[k] 70".to_string(),
        ];
        let mut out = Vec::new();
        super::write(&lines, "t", &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let names: Vec<&str> = v["shared"]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["main", "work", "BLOCKED in x"]);
        assert_eq!(
            v["profiles"][0]["samples"],
            serde_json::json!([[0, 1], [2, 0]])
        );
        assert_eq!(v["profiles"][0]["endValue"], 100);
    }
}
