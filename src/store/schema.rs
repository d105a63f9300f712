// @generated automatically by Diesel CLI.

diesel::table! {
    content (id) {
        id -> Int8,
        kind -> Text,
        subject_id -> Int8,
        status -> Text,
        fields -> Text,
        context -> Text,
        model -> Nullable<Text>,
        reason -> Nullable<Text>,
        version -> Int8,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        owner_id -> Int8,
    }
}

diesel::table! {
    jobs (id) {
        id -> Int8,
        kind -> Text,
        target_id -> Int8,
        priority -> Int4,
        status -> Text,
        attempts -> Int4,
        run_after -> Timestamp,
        locked_by -> Nullable<Text>,
        locked_at -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        player_id -> Int8,
        turn -> Int8,
    }
}

diesel::table! {
    llm_config (id) {
        id -> Int8,
        provider -> Text,
        model -> Text,
        base_url -> Text,
        api_key -> Nullable<Text>,
        last_error -> Nullable<Text>,
        circuit_state -> Text,
        circuit_failures -> Text,
        circuit_opened_at -> Nullable<Timestamp>,
        circuit_resets_at -> Nullable<Timestamp>,
        retry_after_until -> Nullable<Timestamp>,
        updated_at -> Timestamp,
        weight -> Int4,
        priority -> Int4,
        enabled -> Bool,
        parked -> Nullable<Text>,
    }
}

diesel::table! {
    messages (id) {
        id -> Int8,
        user_id -> Int8,
        nickname -> Text,
        text -> Text,
        mood -> Text,
        mood_status -> Text,
        created_at -> Timestamp,
        masked -> Bool,
    }
}

diesel::table! {
    moderation_flags (id) {
        id -> Int8,
        surface -> Text,
        user_id -> Nullable<Int8>,
        text -> Text,
        categories -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    user_days (user_id, day) {
        user_id -> Int8,
        day -> Text,
    }
}

diesel::table! {
    users (id) {
        id -> Int8,
        nickname -> Text,
        token_hash -> Text,
        created_at -> Timestamp,
        last_seen_at -> Timestamp,
        issuer -> Nullable<Text>,
        subject -> Nullable<Text>,
    }
}

diesel::table! {
    runs (id) {
        id -> Int8,
        run_id -> Text,
        project_id -> Text,
        action -> Text,
        input -> Text,
        model -> Text,
        dedup_key -> Text,
        status -> Text,
        pinned -> Bool,
        waiters -> Int4,
        attempts -> Int4,
        text -> Text,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cache_read_tokens -> Int8,
        cache_write_tokens -> Int8,
        cost_micros -> Int8,
        reserved_micros -> Int8,
        error_code -> Nullable<Text>,
        error -> Nullable<Text>,
        created_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        finished_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
        user_id -> Nullable<Int8>,
    }
}

diesel::table! {
    cost_events (id) {
        id -> Int8,
        run_id -> Text,
        project_id -> Text,
        model -> Text,
        attempt -> Int4,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cache_read_tokens -> Int8,
        cache_write_tokens -> Int8,
        cost_micros -> Int8,
        created_at -> Timestamp,
    }
}

diesel::table! {
    budgets (project_id) {
        project_id -> Text,
        limit_micros -> Int8,
        spent_micros -> Int8,
        reserved_micros -> Int8,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    prices (model) {
        model -> Text,
        input_micros -> Int8,
        output_micros -> Int8,
        cache_read_micros -> Int8,
        cache_write_micros -> Int8,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    usage_days (level, owner, day) {
        level -> Text,
        owner -> Text,
        day -> Text,
        spent_tokens -> Int8,
        spent_micros -> Int8,
        reserved_tokens -> Int8,
        reserved_micros -> Int8,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    usage_holds (id) {
        id -> Int8,
        target -> Text,
        user_id -> Int8,
        studio -> Bool,
        day -> Text,
        model -> Text,
        tokens -> Int8,
        micros -> Int8,
        created_at -> Timestamp,
        project -> Nullable<Text>,
    }
}

diesel::table! {
    project_limits (project_id) {
        project_id -> Text,
        daily_tokens -> Nullable<Int8>,
        daily_micros -> Nullable<Int8>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    usage_limits (id) {
        id -> Int8,
        studio_daily_tokens -> Nullable<Int8>,
        studio_daily_micros -> Nullable<Int8>,
        player_daily_tokens -> Nullable<Int8>,
        player_daily_micros -> Nullable<Int8>,
        player_llm_rate -> Text,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    player_limits (user_id) {
        user_id -> Int8,
        blocked -> Bool,
        daily_tokens -> Nullable<Int8>,
        daily_micros -> Nullable<Int8>,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(messages -> users (user_id));
diesel::joinable!(player_limits -> users (user_id));
diesel::joinable!(user_days -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    budgets,
    content,
    cost_events,
    jobs,
    llm_config,
    messages,
    moderation_flags,
    player_limits,
    prices,
    runs,
    usage_days,
    usage_holds,
    project_limits,
    usage_limits,
    user_days,
    users,
);
