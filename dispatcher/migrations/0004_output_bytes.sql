-- Each succeeded step's output size, in bytes of its stored JSON text. The publisher sums
-- these for a step's upstream range to check the inputs limit (`max_inputs_bytes`) before
-- it loads a single output: a 50,000-way fan-in of large outputs is refused from one
-- `sum`, instead of loading gigabytes to find out. NULL for rows written before this
-- column; readers fall back to measuring the output.
ALTER TABLE steps ADD COLUMN output_bytes integer;
