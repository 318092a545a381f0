use super::*;

#[test]
fn parses_a_bench_sh_row() {
    let tsv = "label\ttool\turl\trps\tp50_ms\tp99_ms\ttotal\tok\tbad\terrors\tgw_cpu_pct\treq_per_gw_cpu_s\tbe_cpu_pct\tloadgen_cpu_pct\n\
               x#1\twrk\thttp://127.0.0.1:1/api/items\t1000.5\t1.0\t5.25\t10000\t9990\t10\t2\t80\t20000\t10\t50\n";
    let r = parse_row(tsv).unwrap();
    assert_eq!(r.total, 10000);
    assert_eq!(r.bad, 10);
    assert_eq!(r.errors, 2);
    assert!((r.us_per_req - 50.0).abs() < 1e-9);
    assert!((r.p99_ms - 5.25).abs() < 1e-9);
}
