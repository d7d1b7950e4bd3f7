//! The queries of `dashboard::db` against a real migrated SQLite file: keyset order, filters, samples buckets and
//! retention in batches.

mod common;

use common::temp_dir;
use dashboard::db::{Cursor, Db, DecisionFilter, Mirrored, NewSample};

async fn db(name: &str) -> Db {
    Db::open_path(&temp_dir(name).join("switchyard.db")).await.unwrap()
}

fn decisions(n: u64, at: u64) -> Vec<dashboard::db::NewDecision> {
    (0..n)
        .map(|i| {
            let line = common::decision_line(
                &format!("r{i}"),
                at + i / 2,
                "t",
                if i % 2 == 0 { "pod-0" } else { "pod-1" },
                "Routed",
            );
            let batch = dashboard::ingest::parse(line.as_bytes()).unwrap();
            batch.decisions.into_iter().next().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn keyset_pages_cover_every_row_once_even_with_equal_times() {
    let db = db("keyset").await;
    assert_eq!(db.insert_decisions(&decisions(501, 1000)).await.unwrap(), 501);
    let mut seen = Vec::new();
    let mut after: Option<Cursor> = None;
    for _ in 0..100 {
        let page = db.list_decisions(&DecisionFilter::default(), after, 64).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().cursor());
        seen.extend(page.into_iter().map(|d| (d.received_at_ms, d.id)));
    }
    assert_eq!(seen.len(), 501);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "strictly newest first");
    let pod1 = DecisionFilter {
        pod: Some("default/pod-1".into()),
        from_ms: Some(1100),
        to_ms: Some(1110),
        ..DecisionFilter::default()
    };
    let rows = db.list_decisions(&pod1, None, 100).await.unwrap();
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| r.pod.as_deref() == Some("default/pod-1")));
    let prefix = DecisionFilter {
        request_id_prefix: Some("r50".into()),
        ..DecisionFilter::default()
    };
    let ids: Vec<String> = db
        .list_decisions(&prefix, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids, ["r500", "r50"]);
    let full = db.list_full_decisions(&prefix, None, 1).await.unwrap();
    assert_eq!(full[0].1.candidates.len(), 2);
    assert_eq!(db.get_decision("r7", None).await.unwrap().unwrap().1.request_id, "r7");
    let stats = db.model_stats(0).await.unwrap();
    assert_eq!(stats[0].requests, 501);
}

#[tokio::test]
async fn samples_are_bucketed_and_retention_deletes_in_batches() {
    let db = db("retention").await;
    let samples: Vec<NewSample> = (0..10)
        .map(|i| NewSample {
            pod: "default/p".into(),
            pool: "pool".into(),
            endpoint: "127.0.0.11:8000".into(),
            at_ms: i * 1000,
            queue: i as u32,
            running: 1,
            kv_usage: 0.1 * i as f64,
        })
        .collect();
    db.insert_samples(&samples).await.unwrap();
    let every = db.samples("default/p", 0, 10_000, 1000).await.unwrap();
    assert_eq!(every.len(), 10);
    let halves = db.samples("default/p", 0, 10_000, 5000).await.unwrap();
    assert_eq!(halves.len(), 2);
    assert!((halves[0].queue - 2.0).abs() < 1e-9);
    assert_eq!(db.pod("default/p").await.unwrap().unwrap().last_seen_ms, 9000);
    // An older sample arriving late does not move the latest state back.
    db.insert_samples(&[NewSample {
        at_ms: 500,
        ..samples[0].clone()
    }])
    .await
    .unwrap();
    assert_eq!(db.pod("default/p").await.unwrap().unwrap().last_seen_ms, 9000);

    db.insert_decisions(&decisions(30, 1000)).await.unwrap();
    // Decisions at 1000..1015, samples at 0..9000: cut at 1010 with batches of 4.
    let deleted = db.delete_before(1010, 4).await.unwrap();
    assert_eq!(deleted, 20 + 3, "decisions 1000..1009 and samples at 0, 500 and 1000");
    assert_eq!(
        db.list_decisions(&DecisionFilter::default(), None, 100)
            .await
            .unwrap()
            .len(),
        10
    );
    assert_eq!(db.samples("default/p", 0, 10_000, 1000).await.unwrap().len(), 8);
    assert_eq!(db.delete_before(1010, 4).await.unwrap(), 0);
    db.optimize().await.unwrap();
    db.ping().await.unwrap();
}

#[tokio::test]
async fn mirrored_copies_are_stored_filtered_on_an_index_and_found_from_their_original() {
    let db = db("mirrored").await;
    let mut rows = decisions(40, 5000);
    let copies: Vec<_> = (0..4)
        .map(|i| {
            let line = common::mirror_line(&format!("m{i}"), &format!("r{}", i * 10), 5000 + i * 5, "t-shadow");
            dashboard::ingest::parse(line.as_bytes()).unwrap().decisions.remove(0)
        })
        .collect();
    rows.extend(copies);
    db.insert_decisions(&rows).await.unwrap();
    let only = DecisionFilter {
        mirrored: Some(Mirrored::Only),
        ..DecisionFilter::default()
    };
    let page = db.list_decisions(&only, None, 100).await.unwrap();
    let ids: Vec<&str> = page.iter().map(|d| d.request_id.as_str()).collect();
    assert_eq!(ids, ["m3", "m2", "m1", "m0"]);
    assert_eq!(page[0].mirror_of.as_deref(), Some("r30"));
    let exclude = DecisionFilter {
        mirrored: Some(Mirrored::Exclude),
        ..DecisionFilter::default()
    };
    let page = db.list_decisions(&exclude, None, 100).await.unwrap();
    assert_eq!(page.len(), 40);
    assert!(page.iter().all(|d| d.mirror_of.is_none()));
    let (_, full) = db.get_decision("m1", None).await.unwrap().unwrap();
    assert_eq!(full.mirror_of.as_deref(), Some("r10"));
    let of_r10: Vec<String> = db
        .mirrors_of("r10", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.request_id)
        .collect();
    assert_eq!(of_r10, ["m1"]);
    // Client statistics leave the copies out.
    assert_eq!(
        db.model_stats(0).await.unwrap().iter().map(|s| s.requests).sum::<i64>(),
        40
    );

    // `mirrored=only` pages are a scan of the partial index, already in page order.
    db.analyze().await.unwrap();
    let plan = db.audit_plan(&only, 50).await.unwrap().join(" | ");
    assert!(plan.contains("decisions_mirrored"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "no sort step: {plan}");
    let plan = db.audit_plan(&exclude, 50).await.unwrap().join(" | ");
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}
