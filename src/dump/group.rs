//! Tasks with the same shape are shown once: the same loop, state, coroutine, await chain
//! (function, file, line and state of each link) and kind of awaited object. A service with
//! 20,000 idle connections then dumps as `20,000 × pending idle ...` with one example, not
//! 80,000 lines. Grouping happens as the tasks are read, so memory grows with the number of
//! distinct shapes, not of tasks.

use std::collections::HashMap;

use super::model::{Awaiting, TaskDump};

/// What makes two tasks "the same" here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    loop_tid: Option<u32>,
    state: String,
    coroutine: Option<String>,
    chain: Vec<(String, String, Option<u32>, String)>,
    awaiting: Option<String>,
}

fn shape(t: &TaskDump) -> Shape {
    Shape {
        loop_tid: t.loop_tid,
        state: t.state.clone(),
        coroutine: t.coroutine.clone(),
        chain: t
            .await_chain
            .iter()
            .map(|f| (f.function.clone(), f.file.clone(), f.line, f.state.clone()))
            .collect(),
        // A task awaiting another task: which one does not split the group.
        awaiting: t.awaiting.as_ref().map(|a| match a {
            Awaiting::Task { .. } => "task".to_string(),
            Awaiting::Future { type_name } | Awaiting::Other { type_name } => type_name.clone(),
        }),
    }
}

fn example_order(t: &TaskDump) -> (u64, Option<String>, String) {
    let order = super::task_order(t);
    (order.3, t.name.clone(), t.address.clone())
}

/// Collects tasks into groups (or, with `all`, keeps each one).
#[derive(Debug, Default)]
pub struct Grouper {
    all: bool,
    groups: Vec<TaskDump>,
    index: HashMap<Shape, usize>,
    pub total: u64,
}

impl Grouper {
    pub fn new(all: bool) -> Grouper {
        Grouper {
            all,
            ..Default::default()
        }
    }

    pub fn add(&mut self, t: TaskDump) {
        self.total += 1;
        // The running task is always shown on its own.
        if self.all || t.state == "running" {
            self.groups.push(t);
            return;
        }
        let key = shape(&t);
        match self.index.get(&key) {
            Some(&i) => {
                let g = &mut self.groups[i];
                g.count += 1;
                // The example: the first by name (`Task-N` numerically), then address.
                if example_order(&t) < example_order(g) {
                    let count = g.count;
                    *g = TaskDump { count, ..t };
                }
            }
            None => {
                self.index.insert(key, self.groups.len());
                self.groups.push(t);
            }
        }
    }

    pub fn finish(self) -> Vec<TaskDump> {
        self.groups
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::AwaitFrame;
    use super::*;

    fn task(name: &str, coroutine: &str, line: u32) -> TaskDump {
        TaskDump {
            count: 1,
            address: format!("0x{:x}", name.len() * 16),
            name: Some(name.into()),
            state: "pending".into(),
            coroutine: Some(coroutine.into()),
            loop_tid: Some(7),
            await_chain: vec![AwaitFrame {
                function: coroutine.into(),
                file: "/app/x.py".into(),
                line: Some(line),
                state: "suspended".into(),
            }],
            awaiting: Some(Awaiting::Future {
                type_name: "_asyncio.Future".into(),
            }),
        }
    }

    #[test]
    fn groups_by_shape_and_keeps_the_first_name() {
        let mut g = Grouper::new(false);
        for i in (3..103).rev() {
            g.add(task(&format!("Task-{i}"), "idle", 12));
        }
        g.add(task("fetcher", "idle", 13));
        let mut running = task("Task-1", "main", 5);
        running.state = "running".into();
        g.add(running.clone());
        g.add(running);
        assert_eq!(g.total, 103);
        let groups = g.finish();
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[0].count, 100);
        assert_eq!(groups[0].name.as_deref(), Some("Task-3"));
        assert_eq!(groups[1].count, 1, "another line, another group");
        let mut all = Grouper::new(true);
        all.add(task("a", "idle", 1));
        all.add(task("b", "idle", 1));
        assert_eq!(all.finish().len(), 2);
    }
}
