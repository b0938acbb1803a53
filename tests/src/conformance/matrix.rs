//! Truth tables of the model cases: 9 rows (from-pods) of 9 characters (to-pods), `.` for
//! allowed and `X` for blocked, in the order x/a x/b x/c y/a y/b y/c z/a z/b z/c.

use super::model;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    allowed: Vec<Vec<bool>>,
}

impl Matrix {
    /// Whether the cell (from row `i`, to column `j`) expects a connection.
    pub fn allowed(&self, i: usize, j: usize) -> bool {
        self.allowed[i][j]
    }

    /// Every cell allowed: the state of a lab with no policy.
    pub fn all_allowed() -> Self {
        let n = model::pods().len();
        Matrix { allowed: vec![vec![true; n]; n] }
    }

    /// Renders the rows as in the case files, with the from-pod after each.
    pub fn render(cells: &[Vec<Option<bool>>]) -> String {
        let pods = model::pods();
        let mut out = String::new();
        for (row, from) in cells.iter().zip(&pods) {
            out.push_str("    \"");
            for c in row {
                out.push(match c {
                    Some(true) => '.',
                    Some(false) => 'X',
                    None => ' ',
                });
            }
            out.push_str(&format!("\"  # from {from}\n"));
        }
        out
    }
}

/// Parses a matrix; the message says which row or character is wrong.
pub fn parse(rows: &[String]) -> Result<Matrix, String> {
    let n = model::pods().len();
    if rows.len() != n {
        return Err(format!("a matrix has {n} rows, this one {}", rows.len()));
    }
    let mut allowed = Vec::with_capacity(n);
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<bool> = row
            .chars()
            .map(|c| match c {
                '.' => Ok(true),
                'X' => Ok(false),
                other => Err(format!("row {i} ({row:?}): `{other}` is neither `.` nor `X`")),
            })
            .collect::<Result<_, _>>()?;
        if cells.len() != n {
            return Err(format!("row {i} ({row:?}) has {} cells, not {n}", cells.len()));
        }
        allowed.push(cells);
    }
    Ok(Matrix { allowed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn cells_read_row_from_column_to() {
        let mut r = vec!["........."; 9];
        r[0] = ".X.......";
        let m = parse(&rows(&r)).unwrap();
        assert!(!m.allowed(0, 1), "from x/a to x/b");
        assert!(m.allowed(1, 0), "from x/b to x/a");
    }

    #[test]
    fn malformed_matrices_are_rejected_with_the_row() {
        assert!(parse(&rows(&["........."; 8])).unwrap_err().contains("9 rows"));
        let mut r = vec!["........."; 9];
        r[4] = "....o....";
        assert!(parse(&rows(&r)).unwrap_err().contains("row 4"));
        r[4] = "........";
        assert!(parse(&rows(&r)).unwrap_err().contains("8 cells"));
    }

    #[test]
    fn render_marks_unknown_cells_blank() {
        let mut cells = vec![vec![Some(true); 9]; 9];
        cells[0][0] = None;
        cells[0][1] = Some(false);
        let s = Matrix::render(&cells);
        assert!(s.starts_with("    \" X.......\"  # from x/a\n"), "{s}");
    }
}
