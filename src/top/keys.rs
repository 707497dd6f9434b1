//! Keys for `top`, read from the terminal by us. crossterm's event reader loops without end
//! once its terminal is gone: a read that returns 0 (EOF, a hung-up terminal) or EIO is retried
//! at once, forever, at 100% of a core, and signals are never looked at again. Here one
//! `poll` with a timeout and one non-blocking `read` are made per wait, and a hang-up, EOF or
//! read error is reported as [`Input::Gone`] so the view can end.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

/// The keys the view acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    Esc,
    /// Ctrl-C in raw mode (no SIGINT is sent then).
    CtrlC,
}

/// What one wait gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Keys(Vec<Key>),
    /// Nothing within the timeout.
    Idle,
    /// The terminal is gone (hung up, EOF, a read error): no key will ever come.
    Gone,
}

/// A terminal to read keys from.
#[derive(Debug)]
pub struct Keys {
    tty: File,
}

impl Keys {
    /// Stdin when it is a terminal, else the controlling terminal (`/dev/tty`); `None` when
    /// there is neither.
    pub fn open() -> Option<Keys> {
        let fd = if io::stdin().is_terminal() {
            unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) }
        } else {
            let path = c"/dev/tty";
            unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
        };
        if fd < 0 {
            return None;
        }
        let tty = unsafe { File::from_raw_fd(fd) };
        Some(Keys { tty })
    }

    /// Stdin, only when it is a terminal (plain mode reads `q` from it).
    pub fn stdin() -> Option<Keys> {
        io::stdin().is_terminal().then(Keys::open).flatten()
    }

    /// Wait up to `timeout` for keys.
    pub fn wait(&mut self, timeout: Duration) -> Input {
        let mut pfd = libc::pollfd {
            fd: self.tty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => Input::Idle,
                _ => Input::Gone,
            };
        }
        if n == 0 {
            return Input::Idle;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Input::Gone;
        }
        // Readable: this read does not wait (the terminal is in raw mode, or a line is ready).
        let mut buf = [0u8; 64];
        match self.tty.read(&mut buf) {
            Ok(0) => Input::Gone,
            Ok(n) => Input::Keys(parse(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                Input::Idle
            }
            Err(_) => Input::Gone,
        }
    }
}

/// Keys from the bytes a terminal sent: printable ASCII, Ctrl-C, Esc, and the arrow keys'
/// sequences (`ESC [ A`, or `ESC O A` in application mode). Other sequences are skipped.
pub fn parse(bytes: &[u8]) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0x03 => keys.push(Key::CtrlC),
            0x1b => match bytes.get(i + 1) {
                None => keys.push(Key::Esc),
                Some(b'[' | b'O') => {
                    // A control sequence: parameters, then one final byte (0x40..=0x7e).
                    let mut j = i + 2;
                    while j < bytes.len() && !(0x40..=0x7e).contains(&bytes[j]) {
                        j += 1;
                    }
                    match bytes.get(j) {
                        Some(b'A') => keys.push(Key::Up),
                        Some(b'B') => keys.push(Key::Down),
                        _ => {}
                    }
                    i = j;
                }
                Some(_) => keys.push(Key::Esc),
            },
            b @ 0x20..=0x7e => keys.push(Key::Char(b as char)),
            _ => {}
        }
        i += 1;
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_keys_top_uses() {
        assert_eq!(
            parse(b"q\x03\x1b[A\x1b[B\x1bOA?"),
            vec![
                Key::Char('q'),
                Key::CtrlC,
                Key::Up,
                Key::Down,
                Key::Up,
                Key::Char('?')
            ]
        );
        assert_eq!(parse(b"\x1b"), vec![Key::Esc]);
        // A sequence it does not know (Ctrl-Right), a lone byte of UTF-8, a line break.
        assert_eq!(parse(b"\x1b[1;5Cs\xc3\n"), vec![Key::Char('s')]);
        assert_eq!(parse(b"\x1b["), Vec::<Key>::new());
    }

    /// The other end of a terminal closing (an ssh disconnect, tmux kill-session) must
    /// read as gone, at once and every time: the regression spun at 100% of a core.
    #[test]
    fn a_hung_up_terminal_is_gone() {
        let (mut master, mut slave) = (0, 0);
        let ok = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(ok, 0);
        let mut keys = Keys {
            tty: unsafe { File::from_raw_fd(slave) },
        };
        assert_eq!(keys.wait(Duration::from_millis(1)), Input::Idle);
        unsafe { libc::close(master) };
        let started = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(keys.wait(Duration::from_millis(500)), Input::Gone);
        }
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
