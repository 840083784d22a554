# frozen_string_literal: true

# Giving a lock back (Lock#unlock and the end of #synchronize's block): the
# release on the server or the session, and what a failed one is handed to.

module MegaMutex
  class Lock
    private

    # The release proper (see {#unlock}); runs with interrupts deferred.
    # @return [Boolean]
    def unlock!(hold)
      @depth -= 1
      @hold = nil if @depth.zero?
      hold.depth -= 1
      return true if hold.depth.positive?

      holds = Lock.holds(hold.thread)
      # Another thread may release this hold while its own thread has taken
      # the key anew: that newer hold's entry stays.
      holds.delete(hold.key) if holds[hold.key].equal?(hold)
      Renewer.current.remove(hold)
      released = release_on_server(hold)
      if released
        log(:debug) do
          "released #{hold.key} (lock_id: #{hold.token}), held #{(hold.held * 1000).round(1)} ms " \
            "after waiting #{(hold.waited * 1000).round(1)} ms (#{hold.attempts} attempt#{'s' unless hold.attempts == 1})"
        end
      else
        hold.lose!("it was gone or held by someone else at release (expired, evicted, flushed or server restarted)")
      end
      if Instrumentation.listening?(Instrumentation::RELEASE)
        Instrumentation.instrument(Instrumentation::RELEASE,
                                   { id: hold.id, key: hold.key, held: hold.held, lost: hold.lost?,
                                     fencing_token: hold.fencing_token }, @config.logger)
      end
      released && !hold.lost?
    end

    # Removes `hold` from the server: on the client it was taken on when a
    # block kept it (one round trip: its version is known to that
    # connection), which then goes back to the pool; else on any client of
    # the pool. A release that fails (unreachable, or refused by a full -M
    # server) is handed to the renewer, which removes the lock once the
    # server answers and accepts it again.
    # @return [Boolean] true if removed, false if it was not ours any more
    def release_on_server(hold)
      return release_on_session(hold) if hold.session

      client = hold.client
      return hold.pool.with { |c| c._release(hold.key, hold.token, hold.version) } if client.nil?

      begin
        client._release(hold.key, hold.token, hold.version)
      ensure
        hold.client = nil
        hold.pool.checkin(client)
      end
    rescue Error
      # Unreachable, refused - or a client that cannot be used (closed by a
      # configure, in use): the clean-up removes the lock through another
      # client once the server takes it. Never left for the whole lease.
      Renewer.current.release_later(hold)
      raise
    end

    # A session store's release: on the session the lock was taken on (it
    # lives there and nowhere else), serialised with the renewer's refreshes.
    # A session that fails here has ended, and the lock with it: reported
    # as lost (false), and the session is closed once it holds nothing.
    # @return [Boolean] true if released, false if it was not ours any more
    def release_on_session(hold)
      session = hold.session
      begin
        session.use { hold.client._release(hold.key, hold.token, hold.version) }
      rescue ConnectionError, ServerError => e
        session.broken!
        log(:warn) { "releasing #{hold.key}: #{e.message}" }
        false
      ensure
        hold.client = nil
        session.forget(hold)
      end
    end

    # Unlock after the block; a release error must not hide the block's own.
    # A lease lost while the block ran raises LockLostError once the block has
    # finished (or is only logged, with config.on_lock_lost = :log). Runs with
    # interrupts deferred (#synchronize).
    def release_after_block(finished)
      hold = @hold
      # This call's pinned hold, read while this fiber still holds: once it
      # lets go another thread may take the lock through this same Lock and
      # pin its own (which this call must never give back to the pool).
      pinned = @pinned
      unlock!(hold) unless hold.nil? || hold.pid != MegaMutex.pid
      # No early `return`: one through this method's `ensure` costs an object.
      if finished && @depth.zero? && hold&.lost? && @config.on_lock_lost == :raise
        raise LockLostError.new(id: @id, reason: hold.lost_reason)
      end
    rescue LockLostError
      raise
    rescue Error => e
      if finished
        raise e.exception("#{e.message} (releasing #{@key} after the block ran to completion; the lock is " \
                          "removed as soon as the server takes the release, and frees itself within #{hold.wire_ttl} s anyway)")
      end

      log(:error) { "could not release #{@key} after the block failed: #{e.message}" }
    ensure
      unpin(pinned) if own_depth.zero?
    end

    # The block that pinned a client is over but the lock lives on (another
    # holder nested in it still holds it): the client goes back to the pool,
    # and that holder's release takes any.
    def unpin(hold)
      return if hold.nil?

      @pinned = nil if @pinned.equal?(hold)
      client = hold.client
      return if client.nil? # released, and given back already

      hold.client = nil
      hold.pool.checkin(client)
    end
  end
end
