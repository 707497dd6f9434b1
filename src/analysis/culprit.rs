//! Whose code to blame: the innermost frame of the user's own code, skipping the standard
//! library, installed packages, asyncio's machinery and code generated at run time; and which
//! machinery dispatched it (a logging handler's `emit`, an import, a finalizer), which decides
//! the fix more than the blocking call does.

use crate::sample::Frame;

/// Where a frame's code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The application's own code.
    User,
    /// The Python standard library (asyncio included), frozen modules and builtins.
    Stdlib,
    /// An installed package (site-packages, dist-packages).
    Package,
    /// Code compiled at run time, whose "file" is a name in angle brackets: `<string>` (exec,
    /// dataclass and namedtuple methods), `<attrs generated init ...>`, SQLAlchemy's generated
    /// functions. It has no source to read and is never the culprit while a real file is near.
    Generated,
}

/// Classify a frame by its file name.
pub fn origin(frame: &Frame) -> Origin {
    let file = frame.file.as_str();
    if file.contains("/site-packages/") || file.contains("/dist-packages/") {
        Origin::Package
    } else if file.starts_with("<frozen ") || file.starts_with("<built") || is_stdlib_path(file) {
        Origin::Stdlib
    } else if file.starts_with('<') && file.ends_with('>') {
        Origin::Generated
    } else {
        Origin::User
    }
}

/// `.../lib/python3.X/<module>` is the standard library of a CPython install.
fn is_stdlib_path(file: &str) -> bool {
    file.split('/').collect::<Vec<_>>().windows(2).any(|w| {
        (w[0] == "lib" || w[0] == "lib64")
            && w[1].starts_with("python")
            && w[1][6..].chars().all(|c| c.is_ascii_digit() || c == '.')
            && w[1].len() > 6
    })
}

/// Anonymous code objects that are part of the function that defines them.
fn is_anonymous(f: &Frame) -> bool {
    [
        "<genexpr>",
        "<listcomp>",
        "<dictcomp>",
        "<setcomp>",
        "<lambda>",
    ]
    .iter()
    .any(|a| f.function.ends_with(a))
}

/// The index of the innermost frame of `frames` from `origin_wanted`; a generator expression
/// or lambda is blamed on the function that encloses it (the next frame, same file), so one
/// culprit is named one way.
fn innermost_of(frames: &[Frame], origin_wanted: Origin) -> Option<usize> {
    let mut i = frames.iter().position(|f| origin(f) == origin_wanted)?;
    while is_anonymous(&frames[i]) && frames.get(i + 1).is_some_and(|n| n.file == frames[i].file) {
        i += 1;
    }
    Some(i)
}

/// The index in `whole` of the frame to blame: the innermost user frame of the callback's part
/// (`callback`, a prefix of `whole`, innermost first), else of the whole stack; generated code
/// only when no real source file is on the stack; finally the callback's outermost frame.
pub fn culprit_index(callback: &[Frame], whole: &[Frame]) -> Option<usize> {
    innermost_of(callback, Origin::User)
        .or_else(|| innermost_of(whole, Origin::User))
        .or_else(|| innermost_of(callback, Origin::Generated))
        .or_else(|| callback.len().checked_sub(1))
        .or_else(|| (!whole.is_empty()).then_some(0))
}

/// Pick the frame to blame in `callback` (see [`culprit_index`]).
pub fn culprit<'a>(callback: &'a [Frame], whole: &'a [Frame]) -> Option<&'a Frame> {
    culprit_index(callback, whole).and_then(|i| whole.get(i).or_else(|| callback.get(i)))
}

/// Machinery that called the blocking code on the application's behalf. Its fix is in how the
/// machinery is used (a QueueHandler, an import at start-up), not in the code it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatcher {
    /// `logging` called a handler's `emit` (the user's own `Handler` subclass included).
    Logging,
    /// The import system ran a module's top-level code.
    Import,
    /// A finalizer: `__del__`, or a `weakref.finalize` callback.
    Finalizer,
}

fn last_name(function: &str) -> &str {
    function.rsplit('.').next().unwrap_or(function)
}

fn dispatcher_of(f: &Frame) -> Option<Dispatcher> {
    let name = last_name(&f.function);
    if f.file.ends_with("/logging/__init__.py") && matches!(name, "callHandlers" | "handle") {
        Some(Dispatcher::Logging)
    } else if f.file.starts_with("<frozen importlib._bootstrap")
        && matches!(
            name,
            "_find_and_load" | "_load_unlocked" | "exec_module" | "_load"
        )
    {
        Some(Dispatcher::Import)
    } else if f.file.ends_with("/weakref.py") && name == "__call__" {
        Some(Dispatcher::Finalizer)
    } else {
        None
    }
}

/// The machinery that called the culprit (`whole[culprit]`): found among the frames between it
/// and the next user frame outward. Returns it with the index of the frame to blame instead:
/// for an import, the user's line that imported (the module's own code runs once, at the
/// import); otherwise the culprit itself.
pub fn dispatcher(whole: &[Frame], culprit: usize) -> Option<(Dispatcher, usize)> {
    let blamed = whole.get(culprit)?;
    if origin(blamed) == Origin::User && last_name(&blamed.function) == "__del__" {
        return Some((Dispatcher::Finalizer, culprit));
    }
    let callers = &whole[culprit + 1..];
    let next_user = callers
        .iter()
        .position(|f| origin(f) == Origin::User)
        .map(|i| culprit + 1 + i);
    let between = &whole[culprit + 1..next_user.unwrap_or(whole.len())];
    // Only user code dispatched by machinery: a library's own import or log call is that
    // library's business, and its frames name it already.
    if origin(blamed) != Origin::User {
        return None;
    }
    let d = between.iter().find_map(dispatcher_of)?;
    let index = match d {
        Dispatcher::Import => next_user.unwrap_or(culprit),
        _ => culprit,
    };
    Some((d, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 7,
        }
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin(&f("get", "/usr/lib/python3/dist-packages/requests/api.py")),
            Origin::Package
        );
        assert_eq!(
            origin(&f(
                "sleep",
                "/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/tasks.py"
            )),
            Origin::Stdlib
        );
        assert_eq!(
            origin(&f("x", "<frozen importlib._bootstrap>")),
            Origin::Stdlib
        );
        assert_eq!(origin(&f("handler", "/srv/app/handlers.py")), Origin::User);
        assert_eq!(
            origin(&f("handler", "/srv/lib/python_helpers/x.py")),
            Origin::User
        );
    }

    #[test]
    fn culprit_is_innermost_user_frame() {
        let stack = vec![
            f(
                "send",
                "/venv/lib/python3.11/site-packages/urllib3/connection.py",
            ),
            f("get", "/venv/lib/python3.11/site-packages/requests/api.py"),
            f("fetch", "/srv/app/client.py"),
            f("handler", "/srv/app/main.py"),
        ];
        assert_eq!(culprit(&stack, &stack).unwrap().function, "fetch");
    }

    #[test]
    fn generator_expressions_are_blamed_on_their_function() {
        let stack = vec![
            f("render.<locals>.<genexpr>", "/srv/app/report.py"),
            f("render", "/srv/app/report.py"),
            f("handler", "/srv/app/main.py"),
        ];
        assert_eq!(culprit(&stack, &stack).unwrap().function, "render");
    }

    #[test]
    fn generated_code_is_never_the_culprit() {
        for generated in [
            "<string>",
            "<attrs generated init app.models.Order>",
            "<sqlalchemy generated>",
            "<dataclasses>",
        ] {
            let stack = vec![f("__init__", generated), f("handler", "/srv/app/main.py")];
            assert_eq!(origin(&stack[0]), Origin::Generated, "{generated}");
            assert_eq!(culprit(&stack, &stack).unwrap().function, "handler");
        }
        // Code run by exec() alone on the stack is still named.
        let stack = vec![
            f("<module>", "<string>"),
            f("run", "/usr/lib/python3.11/x.py"),
        ];
        assert_eq!(culprit(&stack, &stack).unwrap().function, "<module>");
    }

    #[test]
    fn logging_handlers_of_the_users_own_are_dispatched_by_logging() {
        let lg = "/usr/lib/python3.11/logging/__init__.py";
        let stack = vec![
            f("SlowHandler.emit", "/srv/app/logs.py"),
            f("Handler.handle", lg),
            f("Logger.callHandlers", lg),
            f("Logger._log", lg),
            f("Logger.warning", lg),
            f("handler", "/srv/app/main.py"),
        ];
        let i = culprit_index(&stack, &stack).unwrap();
        assert_eq!(stack[i].function, "SlowHandler.emit");
        assert_eq!(dispatcher(&stack, i), Some((Dispatcher::Logging, i)));
        // Called directly, the same method is not dispatched by logging.
        let direct = vec![stack[0].clone(), stack[5].clone()];
        assert_eq!(dispatcher(&direct, 0), None);
    }

    #[test]
    fn an_import_blames_the_importing_line() {
        let bs = "<frozen importlib._bootstrap>";
        let stack = vec![
            f("<module>", "/srv/app/heavy.py"),
            f("_call_with_frames_removed", bs),
            f("exec_module", "<frozen importlib._bootstrap_external>"),
            f("_load_unlocked", bs),
            f("_find_and_load", bs),
            f("handler", "/srv/app/main.py"),
        ];
        let i = culprit_index(&stack, &stack).unwrap();
        assert_eq!(i, 0);
        assert_eq!(dispatcher(&stack, i), Some((Dispatcher::Import, 5)));
    }

    #[test]
    fn finalizers() {
        let stack = vec![
            f("Conn.__del__", "/srv/app/db.py"),
            f("handler", "/srv/app/main.py"),
        ];
        assert_eq!(dispatcher(&stack, 0), Some((Dispatcher::Finalizer, 0)));
        let stack = vec![
            f("close_quietly", "/srv/app/db.py"),
            f("finalize.__call__", "/usr/lib/python3.11/weakref.py"),
            f("handler", "/srv/app/main.py"),
        ];
        assert_eq!(dispatcher(&stack, 0), Some((Dispatcher::Finalizer, 0)));
    }

    #[test]
    fn culprit_falls_back_to_callback_when_no_user_code() {
        let stack = vec![
            f("sleep", "/usr/lib/python3.11/x.py"),
            f("cb", "/usr/lib/python3.11/y.py"),
        ];
        assert_eq!(culprit(&stack, &stack).unwrap().function, "cb");
    }
}
