# frozen_string_literal: true

# The jobs a renewer lane runs (Renewer#run_job): renewing a memory-backend
# lease, refreshing a session store's hold, and removing a lock left by a
# failed take or release.

module MegaMutex
  class Renewer
    private

    # Removes an orphaned take (or a lock whose release failed) if it is
    # there; gives up once its lease is over, or once someone else holds the
    # key. A request may land late - queued in a paused server, or in a
    # connection that failed - so an empty answer is checked again: every
    # RETRY seconds for the first second after the server answered, then
    # every second until the lease would have ended anyway.
    def clean_up(hold)
      holder = hold.pool.with { |client| client._read(hold.key) }
      done = if holder == hold.token
               hold.pool.with { |client| client._release(hold.key, hold.token, nil) }
               hold.log(:info, "removed #{hold.key} (lock_id: #{hold.token}), left by a request that had failed")
               true
             else
               !holder.nil?
             end
      @mutex.synchronize do
        _, answered, give_up = @orphans[hold]
        answered ||= now
        if done || now > give_up
          @orphans.delete(hold)
        else
          @orphans[hold] = [now + (now > answered + 1 ? 1.0 : RETRY), answered, give_up]
          wake_by(@orphans[hold][0])
        end
      end
    rescue Error
      @mutex.synchronize do
        entry = @orphans[hold]
        if entry.nil? || now > entry[2] then @orphans.delete(hold) else wake_by(entry[0] = now + RETRY) end
      end
    end

    # A session store's refresh: on the hold's own session, checking that it
    # still holds the lock (which also keeps the session from timing out).
    # A session busy with its holder's request is not idle: looked at again
    # shortly. Not found (the session ended: KILL, restart, timeout) is lost.
    def refresh_session(hold)
      still_ours = hold.session.try_use do
        client = hold.client
        client.nil? ? :released : client._extend(hold.key, hold.token, hold.ttl)
      end
      lost = @mutex.synchronize do
        next false unless @due.key?(hold) # released (or given up) meanwhile: nothing to say

        if still_ours == :busy || still_ours == :released
          wake_by(@due[hold] = now + RETRY)
          false
        elsif still_ours
          wake_by(@due[hold] = now + hold.ttl / 3.0)
          false
        else
          @due.delete(hold)
          true
        end
      end
      hold.lose!("its session no longer holds it (the connection was killed or broke, or the server restarted)") if lost
    rescue Error => e
      hold.log(:warn, "could not refresh #{hold.key}: #{e.message}")
      @mutex.synchronize { wake_by(@due[hold] = now + RETRY) if @due.key?(hold) }
    end

    def renew(hold)
      return refresh_session(hold) if hold.session

      started = now
      still_ours = hold.pool.with { |client| client._extend(hold.key, hold.token, hold.ttl) }
      lost = @mutex.synchronize do
        next false unless @due.key?(hold) # released (or given up) meanwhile: nothing to say

        if still_ours
          hold.valid_until = started + hold.ttl
          wake_by(@due[hold] = now + hold.ttl / 3.0)
          false
        else
          @due.delete(hold)
          true
        end
      end
      # Outside the mutex: lose! logs and publishes lost.mega_mutex, whose
      # subscribers may be slow or take locks themselves.
      hold.lose!("its lease was not found when renewing (expired, evicted, flushed or server restarted)") if lost
    rescue Error => e
      hold.log(:warn, "could not renew #{hold.key}: #{e.message}")
      @mutex.synchronize { wake_by(@due[hold] = now + RETRY) if @due.key?(hold) }
    end
  end
end
