//! Typed rows rendered as aligned tables; the same rows serialize for
//! `--json`, so both outputs come from one source.
use std::fmt::Write as _;

/// One column: header, width, alignment. The last column's width may be 0
/// (left as wide as its text).
pub struct Column {
    pub header: &'static str,
    pub width: usize,
    pub right: bool,
}

pub const fn left(header: &'static str, width: usize) -> Column {
    Column {
        header,
        width,
        right: false,
    }
}

pub const fn right(header: &'static str, width: usize) -> Column {
    Column {
        header,
        width,
        right: true,
    }
}

/// A row of a table.
pub trait Row {
    const COLUMNS: &'static [Column];
    fn cells(&self) -> Vec<String>;
}

fn line(columns: &[Column], cells: &[String]) -> String {
    let mut out = String::new();
    for (i, (c, cell)) in columns.iter().zip(cells).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = if c.right {
            write!(out, "{cell:>w$}", w = c.width)
        } else {
            write!(out, "{cell:<w$}", w = c.width)
        };
    }
    out
}

/// Prints the header and the rows, each line after `indent`.
pub fn print<R: Row>(indent: &str, rows: &[R]) {
    let headers: Vec<String> = R::COLUMNS.iter().map(|c| c.header.to_string()).collect();
    println!("{indent}{}", line(R::COLUMNS, &headers));
    for r in rows {
        println!("{indent}{}", line(R::COLUMNS, &r.cells()));
    }
}

/// Pretty JSON on stdout, for `--json`.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
