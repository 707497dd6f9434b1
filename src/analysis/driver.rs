//! The database driver under an ORM: a sync SQLAlchemy session is a database query on
//! `sqlite3`, `psycopg2` or `pymysql`, not ORM overhead. `source` stays the ORM (what users
//! grep for); `driver` names what runs the query. From the strongest clue to the weakest: a
//! frame of the driver (pure-Python drivers, SQLAlchemy's dialect modules), the fd the query
//! waited on (PostgreSQL's and MySQL's ports and socket paths, an SQLite file), and the
//! application's own files on the stack (an engine URL, an import).

use crate::analysis::classify::imports;
use crate::analysis::culprit::{origin, Origin};
use crate::os::fd::{FdTarget, FdType};
use crate::os::source_files::Lines;
use crate::sample::Frame;

/// Sources that wrap a database driver.
pub fn is_orm(source: &str) -> bool {
    matches!(source, "sqlalchemy" | "django")
}

/// Frames of a driver, or of the ORM module that drives one, by path.
const DRIVER_FRAMES: &[(&str, &str)] = &[
    ("/sqlalchemy/dialects/sqlite/", "sqlite3"),
    ("/sqlalchemy/dialects/postgresql/psycopg2", "psycopg2"),
    ("/sqlalchemy/dialects/postgresql/psycopg.py", "psycopg"),
    ("/sqlalchemy/dialects/mysql/pymysql", "pymysql"),
    ("/sqlalchemy/dialects/mysql/mysqldb", "MySQLdb"),
    ("/django/db/backends/sqlite3/", "sqlite3"),
    ("/django/db/backends/mysql/", "MySQLdb"),
    ("/pymysql/", "pymysql"),
    ("/MySQLdb/", "MySQLdb"),
    ("/psycopg2/", "psycopg2"),
    ("/psycopg/", "psycopg"),
    ("/pg8000/", "pg8000"),
    ("/sqlite3/", "sqlite3"),
];

/// Engine URLs (`create_engine("postgresql+psycopg2://...")`), most specific first.
const URLS: &[(&str, &str)] = &[
    ("sqlite:", "sqlite3"),
    ("sqlite+pysqlite:", "sqlite3"),
    ("postgresql+psycopg2:", "psycopg2"),
    ("postgresql+psycopg:", "psycopg"),
    ("postgresql+pg8000:", "pg8000"),
    ("postgresql:", "psycopg2"),
    ("postgres:", "psycopg2"),
    ("mysql+pymysql:", "pymysql"),
    ("mysql+mysqldb:", "MySQLdb"),
    ("mysql:", "MySQLdb"),
];

/// Imports that name a driver, in the order they are believed.
const IMPORTS: &[&str] = &[
    "sqlite3", "psycopg2", "psycopg", "pymysql", "MySQLdb", "pg8000",
];

/// The driver a blocked database call waited on, from the socket or file.
fn from_fd(fd: &FdTarget) -> Option<&'static str> {
    let port = fd
        .peer
        .as_deref()
        .and_then(|p| p.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok());
    let path = fd.path.as_deref().unwrap_or("");
    match fd.kind {
        FdType::Socket if port == Some(5432) || path.contains(".s.PGSQL.") => Some("psycopg2"),
        FdType::Socket if port == Some(3306) || path.contains("mysql") => Some("MySQLdb"),
        FdType::File => Some("sqlite3"),
        _ => None,
    }
}

/// The driver under an ORM call. `stack` is the whole stack (innermost first), `fd` what the
/// query waited on, `networked` whether it waited on the network (then it is not SQLite, even
/// when a file also names an SQLite URL), `file` reads an application file's lines.
pub fn driver(
    stack: &[Frame],
    fd: Option<&FdTarget>,
    networked: bool,
    file: &mut dyn FnMut(&str) -> Option<Lines>,
) -> Option<&'static str> {
    let framed = stack.iter().find_map(|f| {
        DRIVER_FRAMES
            .iter()
            .find(|(path, _)| f.file.contains(path))
            .map(|(_, d)| *d)
    });
    if framed.is_some() {
        return framed;
    }
    if let Some(d) = fd.and_then(from_fd) {
        return Some(d);
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut texts = Vec::new();
    for f in stack.iter().filter(|f| origin(f) == Origin::User) {
        if seen.contains(&f.file.as_str()) {
            continue;
        }
        seen.push(&f.file);
        if let Some(lines) = file(&f.file) {
            texts.push(lines);
        }
    }
    let fits = |d: &str| !(networked && d == "sqlite3");
    let url = URLS.iter().filter(|(_, d)| fits(d)).find(|(scheme, _)| {
        texts.iter().any(|t| {
            t.iter().any(|l| {
                l.split('#').next().is_some_and(|code| {
                    code.contains(&format!("\"{scheme}")) || code.contains(&format!("'{scheme}"))
                })
            })
        })
    });
    if let Some((_, d)) = url {
        return Some(d);
    }
    IMPORTS
        .iter()
        .filter(|d| fits(d))
        .find(|m| texts.iter().any(|t| imports(t, m)))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn f(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 1,
        }
    }

    const SP: &str = "/venv/lib/python3.11/site-packages";

    fn orm_stack(user_file: &str) -> Vec<Frame> {
        vec![
            f("do_execute", &format!("{SP}/sqlalchemy/engine/default.py")),
            f(
                "Session.execute",
                &format!("{SP}/sqlalchemy/orm/session.py"),
            ),
            f("handler", user_file),
        ]
    }

    fn no_files(_: &str) -> Option<Lines> {
        None
    }

    #[test]
    fn pure_python_drivers_show_in_the_frames() {
        let mut stack = orm_stack("/srv/app.py");
        stack.insert(
            0,
            f(
                "Connection._read_packet",
                &format!("{SP}/pymysql/connections.py"),
            ),
        );
        assert_eq!(driver(&stack, None, false, &mut no_files), Some("pymysql"));
    }

    #[test]
    fn the_socket_or_file_names_a_c_driver() {
        let pg: FdTarget = serde_json::from_str(
            r#"{"fd":7,"type":"socket","protocol":"tcp","peer":"127.0.0.1:5432"}"#,
        )
        .unwrap();
        assert_eq!(
            driver(&orm_stack("/a.py"), Some(&pg), true, &mut no_files),
            Some("psycopg2")
        );
        let unix: FdTarget = serde_json::from_str(
            r#"{"fd":7,"type":"socket","protocol":"unix","path":"/run/postgresql/.s.PGSQL.5432"}"#,
        )
        .unwrap();
        assert_eq!(
            driver(&orm_stack("/a.py"), Some(&unix), true, &mut no_files),
            Some("psycopg2")
        );
        let db: FdTarget =
            serde_json::from_str(r#"{"fd":7,"type":"file","path":"/srv/app.db"}"#).unwrap();
        assert_eq!(
            driver(&orm_stack("/a.py"), Some(&db), false, &mut no_files),
            Some("sqlite3")
        );
    }

    #[test]
    fn the_application_files_name_it_last() {
        let mut files = |path: &str| -> Option<Lines> {
            let text = match path {
                "/srv/url.py" => "from sqlalchemy import create_engine\nengine = create_engine(\"sqlite:///:memory:\")\n",
                "/srv/pg.py" => "ENGINE = create_engine('postgresql://u@db/app')  # prod\n",
                "/srv/imp.py" => "import pymysql\n",
                "/srv/none.py" => "from sqlalchemy.orm import Session\n# create_engine(\"sqlite://\")\n",
                "/srv/both.py" => "LOCAL = create_engine(\"sqlite://\")\nPROD = create_engine(\"postgresql+psycopg2://db/app\")\n",
                _ => return None,
            };
            Some(Arc::new(text.lines().map(String::from).collect()))
        };
        let mut d =
            |file: &str, networked: bool| driver(&orm_stack(file), None, networked, &mut files);
        assert_eq!(d("/srv/url.py", false), Some("sqlite3"));
        assert_eq!(d("/srv/pg.py", true), Some("psycopg2"));
        assert_eq!(d("/srv/imp.py", true), Some("pymysql"));
        assert_eq!(d("/srv/none.py", false), None, "a comment is not a URL");
        assert_eq!(d("/srv/unreadable.py", false), None);
        // Two engines in one file: a query that waited on the network is not SQLite's.
        assert_eq!(d("/srv/both.py", true), Some("psycopg2"));
        assert_eq!(d("/srv/both.py", false), Some("sqlite3"));
    }
}
