//! Whose code to blame: the innermost frame of the user's own code, skipping the standard
//! library, installed packages and asyncio's machinery.

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
}

/// Classify a frame by its file name.
pub fn origin(frame: &Frame) -> Origin {
    let file = frame.file.as_str();
    if file.contains("/site-packages/") || file.contains("/dist-packages/") {
        Origin::Package
    } else if file.starts_with("<frozen ") || file.starts_with("<built") || is_stdlib_path(file) {
        Origin::Stdlib
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

/// The innermost user frame of `frames`; a generator expression or lambda is blamed on the
/// function that encloses it (the next frame, same file), so one culprit is named one way.
fn innermost_user(frames: &[Frame]) -> Option<&Frame> {
    let i = frames.iter().position(|f| origin(f) == Origin::User)?;
    let mut i = i;
    while is_anonymous(&frames[i]) && frames.get(i + 1).is_some_and(|n| n.file == frames[i].file) {
        i += 1;
    }
    Some(&frames[i])
}

/// Pick the frame to blame in `callback` (the callback's part of the stack, innermost first),
/// falling back to the rest of the stack and finally to the innermost frame.
pub fn culprit<'a>(callback: &'a [Frame], whole: &'a [Frame]) -> Option<&'a Frame> {
    innermost_user(callback)
        .or_else(|| innermost_user(whole))
        .or_else(|| callback.last())
        .or_else(|| whole.first())
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
    fn culprit_falls_back_to_callback_when_no_user_code() {
        let stack = vec![
            f("sleep", "/usr/lib/python3.11/x.py"),
            f("cb", "/usr/lib/python3.11/y.py"),
        ];
        assert_eq!(culprit(&stack, &stack).unwrap().function, "cb");
    }
}
